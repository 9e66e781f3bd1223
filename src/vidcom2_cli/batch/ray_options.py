"""What ``--ray`` is given (the cluster's address, the workers, the chunk size) and its checks:
light enough for the command line to check them before torch or Ray is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

RAY_EXTRA = 'pip install "vidcom2-cli[ray]"'
_RAY_ADDRESS = re.compile(r"(local|auto|ray://\S+|[\w.\-]+:\d+)")


@dataclass(frozen=True)
class RayOptions:
    address: str = "local"  # local (start Ray here), auto (join this machine's cluster), ray://
    workers: int | None = None  # default: one per GPU of the cluster, 1 without GPUs
    gpus_per_worker: float | None = None  # default: 1 with GPUs, else 0; fractions share one
    chunk: int = 16  # items per task (whole videos)
    ordered: bool = False  # write records in input order (buffers the ones that come early)
    retries: int = 3  # restarts of a dead worker, and tries of a chunk


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError(f"--ray: Ray is not installed; {RAY_EXTRA}") from None
    return ray


def check_ray_options(options: RayOptions) -> None:
    if not looks_like_address(options.address):
        raise InputError(f"--ray: expected local, auto, ray://HOST:PORT or HOST:PORT, got "
                         f"{options.address!r}")
    if options.workers is not None and options.workers < 1:
        raise InputError(f"--workers: must be at least 1, got {options.workers}")
    if options.gpus_per_worker is not None and options.gpus_per_worker < 0:
        raise InputError(f"--gpus-per-worker: must be at least 0, got {options.gpus_per_worker}")
    if options.chunk < 1:
        raise InputError(f"--chunk: must be at least 1, got {options.chunk}")


def looks_like_address(text: str) -> bool:
    """Whether a word after ``--ray`` is its address (local, auto, ray://HOST:PORT,
    HOST:PORT) rather than the next argument."""
    return _RAY_ADDRESS.fullmatch(text) is not None
