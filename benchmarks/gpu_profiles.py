"""What the GPU suite runs at which size: the GPU and tiny profiles, a part and its result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Profile:
    """The sizes of one kind of run: real presets on a GPU, or tiny fixtures on the CPU."""

    mode: str
    device: str
    dtype: str
    llava: str  # the model of the targets, the method comparison and the reuse benchmark
    qwen: tuple[str, ...]
    frames: int
    new_tokens: int
    repeats: int
    warmup: int
    compressor: tuple[str, ...]
    reuse: tuple[str, ...]
    ask_frames: int
    ask_new_tokens: int
    limits: dict[str, float]
    deadline_s: float
    jobs: int  # ask parts run this many at a time (each a separate process)


GPU = Profile(
    mode="gpu", device="cuda", dtype="bfloat16", llava="random:llava-onevision-7b",
    qwen=("random:qwen2-vl-7b", "random:qwen2.5-vl-7b", "random:qwen3-vl-8b"),
    frames=32, new_tokens=16, repeats=3, warmup=1,
    compressor=("--dtype", "bfloat16", "--repeats", "7", "--warmup", "3"),
    reuse=("--videos", "4", "--questions", "3", "--ratios", "1.0,0.25,0.15",
           "--max-new-tokens", "8"),
    ask_frames=8, ask_new_tokens=4,
    limits={"environment": 60, "checkpoints": 90, "latency-llava-onevision-7b": 120,
            "compressor": 60, "ask-*": 60, "methods": 120, "latency-qwen": 180, "reuse": 150},
    deadline_s=420, jobs=4)

TINY = Profile(
    mode="tiny", device="cpu", dtype="float32", llava="llava_onevision",
    qwen=("qwen2_vl", "qwen2_5_vl", "qwen3_vl"),
    frames=4, new_tokens=2, repeats=1, warmup=0,
    compressor=("--shape", "4x16x64", "--repeats", "1", "--warmup", "1"),
    reuse=("--videos", "2", "--questions", "2", "--ratios", "1.0,0.25", "--max-new-tokens", "2"),
    ask_frames=4, ask_new_tokens=2,
    limits={"*": 300}, deadline_s=1200, jobs=2)


@dataclass(frozen=True)
class Part:
    name: str
    kind: str  # which reader of gpu_figures reads its files
    command: tuple[str, ...]
    limit_s: float = 0.0  # set from the profile's limits and --limit
    parallel: bool = False  # may run beside other parallel parts (no timings compared)


@dataclass
class PartResult:
    name: str
    kind: str
    command: str
    limit_s: float
    status: str = "skipped"  # ok, failed, timeout, skipped
    returncode: int | None = None
    wall_s: float = 0.0
    error: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    brief: str = ""
    files: list[str] = field(default_factory=list)
