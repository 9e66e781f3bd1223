"""`vidcom2 watch` on a long synthetic live stream: does it keep up, and does answering stay as
fast at the last minute as at the first?

    python benchmarks/watch.py [--model tiny|PRESET|PATH] [--minutes 10] [--speed 1]
        [--fps 1] [--chunk 4] [--memory-tokens 4096] [--forget compress] [--side 64]
        [--device cpu] [--json out.json]

A paced source produces a synthetic picture (a new scene every 10 s, a moving bar inside it)
``fps`` times per second of stream, ``speed`` times faster than real time, into the same
bounded, frame-skipping queue a live network source fills; the real chunker encodes,
compresses and appends it to the model's cache as ``vidcom2 watch`` does, and asks a fixed
question after the first minute of stream and after each later minute. Reported: per-chunk
encode time and the lag behind the source (stream seconds), the answer latency at minute 1
and at the last minute, the tokens held, peak process memory (and CUDA memory) at minute 1
and at the end, and the frames skipped. ``--model tiny`` builds the tests' tiny LLaVA-OneVision
checkpoint in a temporary folder (no network); a preset such as
``random:llava-onevision-0.5b`` has real-size random weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_model

from vidcom2_cli.engine import Engine
from vidcom2_cli.models import LoadOptions
from vidcom2_cli.options import CompressionOptions, GenerationOptions
from vidcom2_cli.watch.memory import StreamMemory
from vidcom2_cli.watch.session import ChunkEvent, Watcher, chunk_frames
from vidcom2_cli.watch.source import Frame, FrameQueue

QUESTION = "What has happened so far?"


class PacedSource:
    """A live source without a network: synthetic frames put into a lossy ``FrameQueue`` on a
    thread, at ``fps * speed`` frames per wall-clock second (what ``Watcher`` reads of a
    ``SourceReader``)."""

    def __init__(self, minutes: float, fps: float, speed: float, side: int,
                 capacity: int) -> None:
        self.fps = fps
        self.speed = speed
        self.side = side
        self.total = int(minutes * 60 * fps)
        self.queue = FrameQueue(capacity, lossy=True)
        self.reconnections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.queue.close()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def picture(self, index: int) -> np.ndarray:
        second = index / self.fps
        scene = np.random.default_rng(int(second // 10)).integers(
            0, 256, (1, 1, 3), dtype=np.uint8)
        image = np.broadcast_to(scene, (self.side, self.side, 3)).copy()
        bar = int(second * 7) % self.side
        image[:, bar:bar + max(1, self.side // 16)] = 255
        return image

    def _run(self) -> None:
        began = time.perf_counter()
        for index in range(self.total):
            due = began + index / (self.fps * self.speed)
            if self._stop.wait(max(0.0, due - time.perf_counter())):
                return
            self.queue.put(Frame(index / self.fps, self.picture(index)))
        self.queue.close()


def warm_up(engine: Engine, args: argparse.Namespace, per_chunk: int,
            generation: GenerationOptions) -> None:
    """One chunk and one answer on a memory of their own, so that the first minute's numbers
    do not carry the first call's one-time costs (lazy imports, allocator growth)."""
    memory = StreamMemory(engine, CompressionOptions(ratio=args.ratio), args.fps)
    source = PacedSource(1, args.fps, 1.0, args.side, per_chunk)
    memory.add(np.stack([source.picture(i) for i in range(per_chunk)]),
               [i / args.fps for i in range(per_chunk)])
    memory.ask(QUESTION, generation)


def peak_rss_mib() -> float:
    scale = 1024 if sys.platform == "darwin" else 1  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / scale


def cuda_peak_mib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def tiny_checkpoint(folder: Path) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_models import make_tiny_checkpoint

    return str(make_tiny_checkpoint("llava_onevision", folder / "llava_onevision"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        model = tiny_checkpoint(Path(folder)) if args.model == "tiny" else args.model
        engine = Engine.load(model, LoadOptions(device=args.device, dtype=args.dtype))
    per_chunk = chunk_frames(args.chunk, args.fps)
    generation = GenerationOptions(max_new_tokens=args.max_new_tokens)
    warm_up(engine, args, per_chunk, generation)
    memory = StreamMemory(engine, CompressionOptions(ratio=args.ratio), args.fps,
                          args.memory_tokens or None, args.forget)
    source = PacedSource(args.minutes, args.fps, args.speed, args.side, 2 * per_chunk)
    lags: list[float] = []
    asked: list[dict[str, Any]] = []
    next_minute = [60.0]

    def on_chunk(event: ChunkEvent) -> None:
        lags.append(event.lag_s)
        if event.report.end_s + 1e-9 < next_minute[0]:
            return
        next_minute[0] += 60.0
        answer = memory.ask(QUESTION, generation)
        asked.append({"minute": round(event.report.end_s / 60, 2),
                      "latency_ms": answer.latency_ms, "tokens_held": answer.tokens_held,
                      "generated": answer.generated, "rss_mib": peak_rss_mib(),
                      "cuda_mib": cuda_peak_mib()})

    watcher = Watcher(source, memory, per_chunk, on_chunk)  # type: ignore[arg-type]
    began = time.perf_counter()
    source.start()
    watcher.start()
    watcher.wait()
    watcher.join()
    if watcher.error is not None:
        raise watcher.error
    summary = watcher.summary()
    encode = memory.stats.encode_ms
    return {
        "model": args.model, "device": str(engine.device), "minutes": args.minutes,
        "speed": args.speed, "fps": args.fps, "chunk_s": args.chunk, "side": args.side,
        "memory_tokens": args.memory_tokens, "forget": args.forget,
        "wall_s": time.perf_counter() - began, "chunks": summary.chunks_seen,
        "frames": summary.frames, "frames_skipped": summary.skipped,
        "encoder_calls": summary.encoder_calls, "encode_ms_mean": statistics.fmean(encode),
        "encode_ms_max": max(encode), "lag_s_mean": statistics.fmean(lags),
        "lag_s_max": max(lags), "peak_tokens": summary.peak_tokens,
        "dropped": summary.dropped, "recompressed": summary.recompressed,
        "rebuilds": summary.rebuilds, "answers": asked,
        "machine": f"{platform.machine()}, {cpu_model()}, python "
                   f"{platform.python_version()}",
    }


def table(result: dict[str, Any]) -> list[str]:
    """The result as lines of at most 80 columns."""
    answers = result["answers"]

    def cell(entry: dict[str, Any], key: str, digits: int = 0) -> str:
        value = entry.get(key)
        return "-" if value is None else f"{value:.{digits}f}"

    return [
        f"{result['model']} on {result['device']}: {result['minutes']:g} min at "
        f"{result['fps']:g} fps, {result['speed']:g}x real time, chunks of "
        f"{result['chunk_s']:g} s, {result['side']}x{result['side']} frames",
        f"budget {result['memory_tokens']} tokens ({result['forget']}); peak held "
        f"{result['peak_tokens']}; forgot {result['dropped']}, recompressed "
        f"{result['recompressed']}",
        f"chunks {result['chunks']}, encodes {result['encoder_calls']}, frames "
        f"{result['frames']}, skipped {result['frames_skipped']}",
        f"encode per chunk {result['encode_ms_mean']:.0f} ms mean, "
        f"{result['encode_ms_max']:.0f} ms max; lag {result['lag_s_mean']:.1f} s mean, "
        f"{result['lag_s_max']:.1f} s max",
        "",
        f"{'minute':>8}{'tokens held':>14}{'answer ms':>12}{'peak RSS MiB':>15}"
        f"{'peak CUDA MiB':>15}",
        *[f"{entry['minute']:>8.1f}{entry['tokens_held']:>14}{cell(entry, 'latency_ms'):>12}"
          f"{cell(entry, 'rss_mib'):>15}{cell(entry, 'cuda_mib'):>15}" for entry in answers],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--speed", type=float, default=1.0,
                        help="how many times faster than real time the source runs")
    parser.add_argument("--fps", type=float, default=1.0)
    parser.add_argument("--chunk", type=float, default=4.0)
    parser.add_argument("--side", type=int, default=64, help="frame width and height")
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--memory-tokens", type=int, default=4096)
    parser.add_argument("--forget", choices=["oldest", "compress"], default="compress")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = run(args)
    for line in table(result):
        print(line)
    print(f"machine: {result['machine']}; wall {result['wall_s']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
