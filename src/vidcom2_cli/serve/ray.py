"""``vidcom2 serve --ray``: the same app on Ray Serve.

Each replica loads the model once and runs the app of ``app.py`` unchanged (its scheduler
batches the requests that reach that replica); Ray Serve's HTTP proxy spreads requests over
the replicas, passes streams through, cancels a request whose client left, and scales between
``--replicas`` and ``--max-replicas`` on the requests in flight. Ray Serve's own ``@serve.batch``
is not used: it batches calls of one function, while a chat completion streams and stops on
its own, which the app's scheduler already handles inside the replica.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, first_line
from ..models import LoadOptions
from .app import ServerSettings

APPLICATION = "vidcom2"


@dataclass(frozen=True)
class RayServeOptions:
    address: str = "local"  # local, auto, ray://HOST:PORT or HOST:PORT
    replicas: int = 1
    max_replicas: int | None = None  # autoscale from replicas up to this many
    gpus_per_replica: float | None = None  # default: 1 where the cluster has GPUs, else 0


def check_ray_serve_options(options: RayServeOptions) -> None:
    if options.replicas < 1:
        raise InputError(f"--replicas: must be at least 1, got {options.replicas}")
    if options.max_replicas is not None and options.max_replicas < options.replicas:
        raise InputError(f"--max-replicas: must be at least --replicas ({options.replicas}), "
                         f"got {options.max_replicas}")
    if options.gpus_per_replica is not None and options.gpus_per_replica < 0:
        raise InputError(f"--gpus-per-replica: must be at least 0, got "
                         f"{options.gpus_per_replica}")


class Replica:
    """One Ray Serve replica: a loaded model behind the app (Ray Serve calls
    ``__serve_build_asgi_app__`` once the constructor has run)."""

    def __init__(self, model: str, load_options: LoadOptions, feature_cache: str | None,
                 settings: ServerSettings) -> None:
        from ..engine import Engine
        from ..feature_cache import FeatureCache
        from .app import build_app
        from .runner import configure_logging

        configure_logging(debug=False)
        cache = None if feature_cache is None else FeatureCache(Path(feature_cache))
        engine = Engine.load(model, load_options, cache)
        engine.accept(settings.defaults.compression)
        self._app = build_app(engine, settings)

    def __serve_build_asgi_app__(self) -> Any:
        return self._app


def deploy(options: RayServeOptions, model: str, load_options: LoadOptions,
           feature_cache: str | None, settings: ServerSettings, host: str, port: int) -> bool:
    """Start (or join) Ray, start Ray Serve's proxy on ``host:port`` and run the replicas;
    returns once they have loaded the model (InputError naming what failed), whether this
    process started Ray."""
    from ..batch.ray import _connect
    from ..batch.ray_options import import_ray

    ray = import_ray()
    try:
        from ray import serve
    except ImportError:
        raise InputError('--ray: Ray Serve is not installed; pip install "vidcom2-cli[ray]"'
                         ) from None
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    started = _connect(ray, options.address)
    gpus = float(ray.cluster_resources().get("GPU", 0))
    per_replica = options.gpus_per_replica
    if per_replica is None:
        per_replica = 1.0 if gpus and load_options.device != "cpu" else 0.0
    actor_options: dict[str, Any] = {"num_gpus": per_replica, "num_cpus": 1 if gpus else 0,
                                     "runtime_env": {"env_vars": _replica_environment()}}
    scaling: dict[str, Any] = {"num_replicas": options.replicas}
    if options.max_replicas is not None and options.max_replicas > options.replicas:
        scaling = {"autoscaling_config": {
            "min_replicas": options.replicas, "max_replicas": options.max_replicas,
            "target_ongoing_requests": settings.max_batch}}
    serve.start(http_options={"host": host, "port": port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    deployment = serve.deployment(
        serve.ingress()(Replica), name="vidcom2",
        max_ongoing_requests=settings.max_queue + settings.max_batch,
        ray_actor_options=actor_options, **scaling)
    try:
        serve.run(deployment.bind(model, load_options, feature_cache, settings),
                  name=APPLICATION, route_prefix="/", blocking=False)
    except Exception as error:
        shutdown(started)
        raise InputError(f"--ray: the replicas could not start ({_cause(error)})") from None
    return started


def shutdown(started: bool) -> None:
    """Stop the replicas (each finishes its requests in flight first); on a Ray this process
    started, Serve and Ray too (on a cluster it joined, only this application)."""
    import ray
    from ray import serve

    if started:
        serve.shutdown()
    else:
        serve.delete(APPLICATION)
    ray.shutdown()


def _replica_environment() -> dict[str, str]:
    """What a replica needs of this process's environment: the import path (a source
    checkout) and the quiet settings of the libraries."""
    names = ("PYTHONPATH", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_VERBOSITY",
             "TOKENIZERS_PARALLELISM")
    return {name: os.environ[name] for name in names if name in os.environ}


def _cause(error: BaseException) -> str:
    """The last line of a replica's failure that says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line.split(":")[0]]
    return (errors[-1] if errors else first_line(error))[:300]
