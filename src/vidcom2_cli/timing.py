"""Device-synchronised timing: pipeline stages, and prefill vs decode inside ``generate``."""

from __future__ import annotations

import gc
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work so a wall-clock reading covers it (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


_STAGE_LISTENERS: list[Callable[[str], None]] = []


@contextmanager
def stage_listener(callback: Callable[[str], None]) -> Iterator[None]:
    """Call ``callback(stage)`` as each stage starts ("video_decode", "preprocess", "vision",
    "compress", "prefill", "decode"): the command line's status line names the stage."""
    _STAGE_LISTENERS.append(callback)
    try:
        yield
    finally:
        _STAGE_LISTENERS.remove(callback)


def _notify(stage: str) -> None:
    for listener in list(_STAGE_LISTENERS):
        listener(stage)


@dataclass
class StageTimer:
    """Milliseconds per named stage, each measured between device synchronisations."""

    device: torch.device
    stages_ms: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        _notify(name)
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.stages_ms[name] = self.stages_ms.get(name, 0.0) + (
                time.perf_counter() - start) * 1000.0


class TokenClock:
    """A stopping criterion that never stops: it timestamps each generated token.

    ``generate`` calls stopping criteria once per new token, after the token is chosen, so the
    first call marks the end of prefill (time to first token) and later ones each decode step.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = 0.0
        self.stamps: list[float] = []

    def begin(self) -> None:
        _notify("prefill")
        synchronize(self.device)
        self.start = time.perf_counter()
        self.stamps = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())
        if len(self.stamps) == 1:
            _notify("decode")
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def result(self) -> GenerationTiming:
        if not self.stamps:
            return GenerationTiming(prefill_ms=0.0, decode_ms=0.0, decode_steps=0)
        prefill = (self.stamps[0] - self.start) * 1000.0
        decode = (self.stamps[-1] - self.stamps[0]) * 1000.0
        return GenerationTiming(prefill_ms=prefill, decode_ms=decode,
                                decode_steps=len(self.stamps) - 1)


@dataclass(frozen=True)
class GenerationTiming:
    """Prefill = prompt forward + first token; decode = every later token."""

    prefill_ms: float
    decode_ms: float
    decode_steps: int

    @property
    def decode_ms_per_token(self) -> float:
        return self.decode_ms / self.decode_steps if self.decode_steps else 0.0

    @property
    def total_ms(self) -> float:
        return self.prefill_ms + self.decode_ms


_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
_cpu_peak_was_reset = False


def reset_peak_memory(devices: Sequence[torch.device]) -> None:
    """Start a new peak: the CUDA allocator's on each GPU of ``devices``, or on a CPU the
    process's resident-set peak.

    Linux resets the resident high-water mark (VmHWM) to the current resident set when "5" is
    written to /proc/self/clear_refs; elsewhere the CPU peak is the process's lifetime peak.
    """
    global _cpu_peak_was_reset
    gpus = [device for device in devices if device.type == "cuda"]
    if gpus:
        for gpu in gpus:
            torch.cuda.reset_peak_memory_stats(gpu)
        return
    try:
        _PROC_CLEAR_REFS.write_text("5")
        _cpu_peak_was_reset = True
    except OSError:  # not Linux, or a sandboxed /proc: report the lifetime peak, labelled so
        _cpu_peak_was_reset = False


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` means the device ran out of memory.

    torch raises ``OutOfMemoryError`` from its allocator, but cuBLAS and cuDNN workspace
    failures arrive as a plain RuntimeError ("CUBLAS_STATUS_ALLOC_FAILED", "CUDA error: out of
    memory").
    """
    if isinstance(error, torch.OutOfMemoryError | torch.cuda.OutOfMemoryError):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in message or "CUBLAS_STATUS_ALLOC_FAILED" in message)


def release_cached_memory() -> None:
    """After an out-of-memory error: collect garbage, then give cached CUDA blocks back.

    Call it once the failed call's traceback is gone (outside the ``except`` block), or the
    tensors its frames hold stay alive. ``empty_cache`` does nothing unless CUDA is in use.
    """
    gc.collect()
    torch.cuda.empty_cache()


@dataclass(frozen=True)
class PeakMemory:
    """Peak memory and where it was read: the CUDA allocator since the last reset, the
    process's resident set since the last reset (Linux, "process_peak_rss"), or the process's
    lifetime peak resident set where it cannot be reset ("process_max_rss")."""

    bytes: int
    source: str


def peak_memory(devices: Sequence[torch.device]) -> PeakMemory:
    """The peak since ``reset_peak_memory(devices)``: summed over the GPUs (a model spread by a
    device_map), or the CPU process's."""
    gpus = [device for device in devices if device.type == "cuda"]
    if gpus:
        return PeakMemory(sum(int(torch.cuda.max_memory_allocated(gpu)) for gpu in gpus),
                          "cuda_max_allocated")
    if _cpu_peak_was_reset:
        try:
            for line in _PROC_STATUS.read_text().splitlines():
                if line.startswith("VmHWM:"):  # "VmHWM:    24916 kB"
                    return PeakMemory(int(line.split()[1]) * 1024, "process_peak_rss")
        except (OSError, ValueError, IndexError):
            pass
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, else KiB
    return PeakMemory(max_rss if sys.platform == "darwin" else max_rss * 1024, "process_max_rss")
