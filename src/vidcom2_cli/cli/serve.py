"""``vidcom2 serve``: one loaded model behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..catalog import (
    DEFAULT_CHUNK_S,
    DEFAULT_FORGET,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MEMORY_TOKENS,
    DEFAULT_METHOD,
    DEFAULT_MODEL,
    DEFAULT_NUM_FRAMES,
    DEFAULT_RATIO,
    DEFAULT_WATCH_FPS,
)
from . import console
from .app import app
from .checks import (
    OptionError,
    Terminated,
    check_generation_options,
    check_load_options,
    check_numbers,
    check_sampling_options,
    check_stream_memory,
    compression_profile_of,
    parse_method_options,
)
from .options import (
    AttnOption,
    DebugOption,
    DeviceMapOption,
    DeviceOption,
    DtypeOption,
    FeatureCacheOption,
    FpsOption,
    FramesOption,
    MaxFramesOption,
    MaxNewTokensOption,
    MaxPixelsOption,
    MethodOption,
    MethodSettingOption,
    MinPixelsOption,
    ModelOption,
    RatioOption,
    SampleOption,
    SeedOption,
    TemperatureOption,
    TopPOption,
)

if TYPE_CHECKING:
    from ..serve.app import ServerSettings
    from ..serve.protocol import ServeDefaults
    from ..serve.streams import Streams

from .runtime import (
    answer_options,
    compression_options,
    load_engine,
    preflight,
    sampling_options,
)

MiB = 2**20


@app.command()
def serve(
    model: ModelOption = DEFAULT_MODEL,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback needs "
                                      "--api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: a free one, printed at start).")] = 8000,
    api_key: Annotated[str | None, typer.Option(
        envvar="VIDCOM2_API_KEY", show_envvar=True,
        help="Require 'Authorization: Bearer KEY' on every route but /health.")] = None,
    media_root: Annotated[Path | None, typer.Option(
        help="Local videos (paths, file:// URLs) are read only under this folder, after "
        "resolving links. Default: the working directory.", show_default=False)] = None,
    allow_remote_media: Annotated[bool, typer.Option(
        "--allow-remote-media",
        help="Download http(s) video URLs (size and time limited).")] = False,
    served_model_name: Annotated[str | None, typer.Option(
        help="The model name clients send (default: --model as given).",
        show_default=False)] = None,
    max_batch: Annotated[int, typer.Option(help="Requests answered by one generate "
                                           "call, at most.")] = 8,
    batch_wait_ms: Annotated[float, typer.Option(help="How long the first request of a batch "
                                                 "waits for others.")] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Requests waiting at most; more get 503 with "
                                           "Retry-After.")] = 64,
    prefix_cache_mb: Annotated[int, typer.Option(
        help="Memory for compressed, prefilled video prefixes reused by later questions "
        "(least recently used out; 0: none).")] = 1024,
    request_timeout: Annotated[float, typer.Option(help="Seconds a request may take, queue "
                                                   "included.")] = 600.0,
    max_media_mb: Annotated[int, typer.Option(help="Largest video sent as a data: URL or "
                                              "downloaded.")] = 512,
    download_timeout: Annotated[float, typer.Option(help="Seconds a remote video's download "
                                                    "may take.")] = 60.0,
    ratio: RatioOption = DEFAULT_RATIO,
    method: MethodOption = DEFAULT_METHOD,
    method_option: MethodSettingOption = None,
    frames: FramesOption = DEFAULT_NUM_FRAMES,
    fps: FpsOption = None,
    max_frames: MaxFramesOption = DEFAULT_MAX_FRAMES,
    min_pixels: MinPixelsOption = None,
    max_pixels: MaxPixelsOption = None,
    max_new_tokens: MaxNewTokensOption = DEFAULT_MAX_NEW_TOKENS,
    sample: SampleOption = False,
    temperature: TemperatureOption = None,
    top_p: TopPOption = None,
    seed: SeedOption = 0,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    attn: AttnOption = "auto",
    device_map: DeviceMapOption = None,
    feature_cache: FeatureCacheOption = None,
    ray_address: Annotated[str | None, typer.Option(
        "--ray", metavar="[ADDRESS]", help="Serve on Ray Serve, one model per replica behind "
        "its HTTP proxy: local (the default when no address follows), auto, or "
        "ray://HOST:PORT.")] = None,
    replicas: Annotated[int, typer.Option(help="With --ray: replicas (each loads the "
                                          "model).")] = 1,
    max_replicas: Annotated[int | None, typer.Option(
        help="With --ray: scale up to this many replicas while requests wait.",
        show_default=False)] = None,
    gpus_per_replica: Annotated[float | None, typer.Option(
        help="With --ray: GPUs per replica (default 1 where the cluster has GPUs, else 0).",
        show_default=False)] = None,
    watch: Annotated[list[str] | None, typer.Option(
        "--watch", metavar="NAME=SOURCE", help="Watch a live source (as `vidcom2 watch` "
        "does) from start; requests ask about it with the video URL stream://NAME. "
        "Repeatable.", show_default=False)] = None,
    watch_fps: Annotated[float, typer.Option(help="With --watch: frames sampled per second "
                                             "of a stream.")] = DEFAULT_WATCH_FPS,
    watch_chunk: Annotated[float, typer.Option(help="With --watch: seconds of stream encoded "
                                               "and compressed together.")
                           ] = DEFAULT_CHUNK_S,
    memory_tokens: Annotated[int, typer.Option(
        help="With --watch: most tokens a stream may hold in the model's cache (0: no "
        "bound).")] = DEFAULT_MEMORY_TOKENS,
    forget: Annotated[str, typer.Option(
        help="With --watch: when a stream's memory is full, compress (older chunks keep "
        "fewer tokens) or oldest (drop the oldest chunks).")] = DEFAULT_FORGET,
    debug: DebugOption = False,
) -> None:
    """Serve the model over HTTP: OpenAI's chat completions API with video_url parts.

    --ratio, --method, --frames, --max-new-tokens and the options after them are the
    defaults of requests that do not set them (see docs/serve.md).
    """
    with console.cli_errors(debug):
        check_numbers(ratio, max_new_tokens)
        check_generation_options(sample, temperature, top_p)
        check_sampling_options(frames, fps, max_frames, min_pixels, max_pixels)
        check_load_options(device, dtype, attn)
        root = _check_server_options(host, port, api_key, media_root, max_batch, max_queue,
                                     batch_wait_ms, prefix_cache_mb, request_timeout,
                                     max_media_mb, download_timeout)
        method_settings = parse_method_options(method_option)
        streams = _check_watch(watch or [], watch_fps, watch_chunk, memory_tokens, forget,
                               ray_address)
        preflight(model, [method])
        from ..options import check_options, check_sampling
        from ..serve.app import build_app
        from ..serve.protocol import ServeDefaults
        from ..serve.runner import BindError, bind, configure_logging, serve_forever, url_of

        defaults = ServeDefaults(
            sampling_options(frames, fps, max_frames, min_pixels, max_pixels),
            compression_options(ratio, method, seed, method_settings),
            answer_options(max_new_tokens, sample, temperature, top_p, seed))
        check_options(defaults.compression, defaults.generation, compression_profile_of(model))
        check_sampling(defaults.sampling)
        try:  # before the (slow) model load: a port in use fails at once
            sock = bind(host, port)
        except BindError as error:
            raise OptionError(str(error)) from None
        if ray_address is not None:
            port = sock.getsockname()[1]  # a free one for --port 0
            sock.close()  # Ray Serve's proxy listens there
            _serve_on_ray(ray_address, replicas, max_replicas, gpus_per_replica, model,
                          device, dtype, attn, device_map, feature_cache,
                          _settings(model, served_model_name, defaults, root,
                                    allow_remote_media, max_media_mb, download_timeout,
                                    api_key, request_timeout, max_batch, max_queue,
                                    batch_wait_ms, prefix_cache_mb), host, port)
            return
        if (replicas, max_replicas, gpus_per_replica) != (1, None, None):
            raise OptionError("--replicas/--max-replicas/--gpus-per-replica: only with --ray")
        if streams is not None:
            from ..decoders import library_logs

            library_logs(show=debug)
            streams.open_sources()  # a source that cannot be opened fails before the load
        engine = load_engine(model, device, dtype, attn, device_map,
                             feature_cache=feature_cache)
        engine.accept(defaults.compression)
        bounds = engine.pixel_bounds(defaults.sampling)
        if streams is not None:
            streams.attach(engine, defaults.compression, bounds)
        settings = _settings(model, served_model_name, defaults, root, allow_remote_media,
                             max_media_mb, download_timeout, api_key, request_timeout,
                             max_batch, max_queue, batch_wait_ms, prefix_cache_mb)
        name = settings.served_model
        configure_logging(debug)
        url = url_of(sock, host)

        def ready() -> None:
            watched = [] if streams is None else [
                f"watching {stream} as stream://{stream}" for stream, _ in streams.specs]
            for line in (f"serving {name}", f"at {url}/v1 (OpenAI API), media root {root}",
                         *watched, "Ctrl-C or SIGTERM stops it after the requests in flight"):
                console.stderr.print(line, markup=False, highlight=False, soft_wrap=True)

        try:
            serve_forever(build_app(engine, settings, streams), sock, request_timeout, ready)
        except KeyboardInterrupt:  # uvicorn re-raises the signal once it has drained
            console.stderr.print("server stopped", highlight=False)


def _settings(model: str, served_model_name: str | None, defaults: ServeDefaults, root: Path,
              allow_remote_media: bool, max_media_mb: int, download_timeout: float,
              api_key: str | None, request_timeout: float, max_batch: int, max_queue: int,
              batch_wait_ms: float, prefix_cache_mb: int) -> ServerSettings:
    from ..serve.app import ServerSettings
    from ..serve.media import MediaRules

    return ServerSettings(
        served_model=served_model_name or model, defaults=defaults,
        media=MediaRules(root, allow_remote_media, max_media_mb * MiB, download_timeout),
        api_key=api_key, max_body_bytes=(max_media_mb * 4 // 3 + 16) * MiB,
        request_timeout_s=request_timeout, max_batch=max_batch, max_queue=max_queue,
        batch_wait_s=batch_wait_ms / 1000.0, prefix_cache_bytes=prefix_cache_mb * MiB)


def _serve_on_ray(address: str, replicas: int, max_replicas: int | None,
                  gpus_per_replica: float | None, model: str, device: str, dtype: str,
                  attn: str, device_map: str | None, feature_cache: Path | None,
                  settings: ServerSettings, host: str, port: int) -> None:
    """Run the replicas on Ray Serve and wait for Ctrl-C or SIGTERM, then stop them (each
    finishes its requests in flight)."""
    import signal
    import time

    from ..models import LoadOptions
    from ..serve.ray import RayServeOptions, check_ray_serve_options, deploy, shutdown
    from .runtime import feature_cache_at

    options = RayServeOptions(address, replicas, max_replicas, gpus_per_replica)
    check_ray_serve_options(options)
    cache = None if feature_cache is None else str(
        feature_cache_at(feature_cache).directory.expanduser().resolve())
    with console.stderr.status(f"starting {replicas} Ray Serve replica"
                               f"{'s' if replicas != 1 else ''} of {model} ..."):
        started = deploy(options, model, LoadOptions(device=device, dtype=dtype, attention=attn,
                                                     device_map=device_map),
                         cache, settings, host, port)
    shown = f"[{host}]" if ":" in host else host
    for line in (f"serving {settings.served_model} on Ray Serve ({replicas} replica"
                 f"{'s' if replicas != 1 else ''})", f"at http://{shown}:{port}/v1 (OpenAI "
                 f"API), media root {settings.media.root}",
                 "Ctrl-C or SIGTERM stops it after the requests in flight"):
        console.stderr.print(line, markup=False, highlight=False, soft_wrap=True)
    signal.signal(signal.SIGTERM, _stop)  # Ray's own handler, set by ray.init, ends at once
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        with console.stderr.status("stopping the replicas ..."):
            shutdown(started)
        console.stderr.print("server stopped", highlight=False)


def _stop(signum: int, frame: object) -> None:
    raise Terminated


def _check_watch(values: list[str], fps: float, chunk: float, memory_tokens: int, forget: str,
                 ray_address: str | None) -> Streams | None:
    """``--watch`` and its options, before anything heavy: the streams to watch, or None."""
    from ..serve.streams import Streams, WatchSettings, parse_watch
    if not fps > 0 or fps == float("inf"):
        raise OptionError(f"--watch-fps: must be above 0, got {fps:g}")
    if not chunk > 0 or chunk == float("inf"):
        raise OptionError(f"--watch-chunk: must be above 0, got {chunk:g}")
    check_stream_memory(memory_tokens, forget)
    if not values:
        return None
    if ray_address is not None:
        raise OptionError("--watch: not with --ray (each replica would watch its own copy)")
    try:
        specs = parse_watch(values)
    except ValueError as error:
        raise OptionError(str(error)) from None
    return Streams(specs, WatchSettings(fps, chunk, memory_tokens, forget))


def _check_server_options(host: str, port: int, api_key: str | None, media_root: Path | None,
                          max_batch: int, max_queue: int, batch_wait_ms: float,
                          prefix_cache_mb: int, request_timeout: float, max_media_mb: int,
                          download_timeout: float) -> Path:
    """The server's own options, before anything heavy; returns the resolved media root."""
    from ..serve.runner import is_loopback

    if not 0 <= port <= 65535:
        raise OptionError(f"--port: must be 0-65535, got {port}")
    if not is_loopback(host) and not api_key:
        raise OptionError(f"--host: {host} is reachable from other machines; set --api-key "
                          "(or VIDCOM2_API_KEY) to serve there")
    if api_key is not None and not api_key.strip():
        raise OptionError("--api-key: is empty")
    for name, value, least in (("--max-batch", max_batch, 1), ("--max-queue", max_queue, 1),
                               ("--prefix-cache-mb", prefix_cache_mb, 0),
                               ("--max-media-mb", max_media_mb, 1)):
        if value < least:
            raise OptionError(f"{name}: must be at least {least}, got {value}")
    for name, number in (("--batch-wait-ms", batch_wait_ms), ("--request-timeout",
                                                             request_timeout),
                         ("--download-timeout", download_timeout)):
        if not number >= 0 or number == float("inf"):
            raise OptionError(f"{name}: must be a finite number of at least 0, got {number}")
    root = (media_root or Path.cwd()).expanduser()
    if not root.is_dir():
        raise OptionError(f"--media-root: {root} is not a folder")
    return root.resolve()
