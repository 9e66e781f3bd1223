"""Encode once, ask many: per-question wall time of a Video-MME-shaped batch without reuse, with
prefix reuse, and with a warm feature cache; and a ratio sweep with and without the cache.

    python benchmarks/reuse.py [--models random:llava-onevision-0.5b,random:qwen2-vl-2b]
        [--videos 4] [--questions 3] [--frames 16] [--ratio 0.25] [--ratios 1.0,0.25,0.15]
        [--max-new-tokens 8] [--device auto] [--dtype auto] [--json FILE]

Each model runs the same batch (``--videos`` x ``--questions`` lines, questions interleaved
across videos as a benchmark file lists them) side by side in one process, after one unmeasured
warm-up: ``--no-reuse`` (every line decoded, encoded and prefilled on its own), reuse (one
decode, encoding, compression and prefix prefill per video) and reuse with a feature cache
filled beforehand (no decoding and no vision encoder). Then the ratio sweep: the batch at each
of ``--ratios`` with reuse, once without a cache and once with a warm one. Prints per-question
wall time, the speed-ups, and whether the targets (reuse >= 2.5x faster than no reuse, warm
sweep >= 2x faster than without) are met. Videos: the sample clips and
../shared/videos/big_buck_bunny.mp4 when present; a byte-altered copy of a sample fills up to
``--videos`` (other content, so another cache entry). Random-weight presets generate every one
of ``--max-new-tokens`` (forced), so the decode share is the same in every mode. ``--json``
also writes each model's figures (after each model).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from vidcom2_cli.batch.input import parse_lines
from vidcom2_cli.batch.local import BatchOptions, run_batch
from vidcom2_cli.batch.output import ResultWriter
from vidcom2_cli.engine import Engine
from vidcom2_cli.feature_cache import FeatureCache
from vidcom2_cli.models import LoadOptions
from vidcom2_cli.options import CompressionOptions, GenerationOptions, SamplingOptions

ROOT = Path(__file__).resolve().parents[1]
SHARED_VIDEO = ROOT.parent / "shared" / "videos" / "big_buck_bunny.mp4"
QUESTIONS = ("What happens in this video?", "What colour is the main object?",
             "How many objects are there?", "Where does the scene take place?",
             "What changes between the beginning and the end?")
REUSE_TARGET, SWEEP_TARGET = 2.5, 2.0


def videos(count: int, scratch: Path) -> list[Path]:
    found = sorted((ROOT / "sample_videos").glob("*.mp4"))
    if SHARED_VIDEO.is_file():
        found.append(SHARED_VIDEO)
    copies = 0
    while len(found) < count:  # other bytes, the same frames: another video for the cache
        copies += 1
        copy = scratch / f"copy-{copies}-{found[0].name}"
        shutil.copy(found[0], copy)
        with copy.open("ab") as handle:
            handle.write(b"\0" * copies)
        found.append(copy)
    return found[:count]


def batch_file(clips: list[Path], questions: int, scratch: Path) -> Path:
    lines = [f'{{"id": "v{v}-q{q}", "video": "{clip}", "question": "{QUESTIONS[q]}"}}'
             for q in range(questions) for v, clip in enumerate(clips)]
    path = scratch / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def timed_run(engine: Engine, source: Path, options: BatchOptions, out: Path) -> float:
    """Wall seconds of one batch run; fails on any error record."""
    out.unlink(missing_ok=True)
    items = parse_lines(source.read_bytes(), source.parent)
    start = time.perf_counter()
    with ResultWriter.open(str(out)) as writer:
        summary = run_batch(engine, items, options, writer)
    wall = time.perf_counter() - start
    if summary.errors:
        raise SystemExit(f"{summary.errors} items failed: {out.read_text()[:500]}")
    return wall


def bench_model(model: str, args: argparse.Namespace, scratch: Path) -> dict[str, object]:
    """Run the batch in every mode and the ratio sweep; print them and return the figures."""
    started = time.perf_counter()
    engine = Engine.load(model, LoadOptions(device=args.device, dtype=args.dtype))
    ready = time.perf_counter() - started
    clips = videos(args.videos, scratch)
    source = batch_file(clips, args.questions, scratch)
    count = args.videos * args.questions
    generation = GenerationOptions(max_new_tokens=args.max_new_tokens,
                                   min_new_tokens=args.max_new_tokens)
    base = BatchOptions(SamplingOptions(frames=args.frames), CompressionOptions(args.ratio),
                        generation, batch_size=1, reuse=True)
    out = scratch / "out.jsonl"
    device = engine.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{model} on {name} ({os.cpu_count()} cores, {engine.loaded.dtype}, ready in "
          f"{ready:.1f} s); {args.videos} videos x {args.questions} questions, {args.frames} "
          f"frames, R={args.ratio}, {args.max_new_tokens} new tokens", flush=True)
    (scratch / "warm").mkdir()
    timed_run(engine, batch_file(clips[:1], 1, scratch / "warm"), base, out)  # warm-up

    cache = FeatureCache(scratch / f"cache-{abs(hash(model))}")
    walls = {"no reuse": timed_run(engine, source, replace(base, reuse=False), out),
             "prefix reuse": timed_run(engine, source, base, out)}
    engine.feature_cache = cache
    timed_run(engine, source, base, out)  # fills the cache
    walls["reuse + warm feature cache"] = timed_run(engine, source, base, out)
    engine.feature_cache = None
    print(f"{'mode':<28}{'ms per question':>16}{'vs no reuse':>13}")
    for label, wall in walls.items():
        print(f"{label:<28}{1000 * wall / count:>16,.0f}{walls['no reuse'] / wall:>12.2f}x")
    reuse_speedup = walls["no reuse"] / walls["prefix reuse"]
    print(f"target: prefix reuse >= {REUSE_TARGET}x faster than no reuse: {reuse_speedup:.2f}x "
          f"{'PASS' if reuse_speedup >= REUSE_TARGET else 'MISS'}", flush=True)

    ratios = [float(ratio) for ratio in args.ratios.split(",")]
    sweeps = {}
    for label, feature_cache in (("sweep, no cache", None), ("sweep, warm cache", cache)):
        engine.feature_cache = feature_cache
        sweeps[label] = sum(timed_run(engine, source, replace(
            base, compression=CompressionOptions(ratio)), out) for ratio in ratios)
    engine.feature_cache = None
    print(f"{'ratio sweep ' + args.ratios:<28}{'ms per question':>16}{'vs no cache':>13}")
    for label, wall in sweeps.items():
        print(f"{label:<28}{1000 * wall / (count * len(ratios)):>16,.0f}"
              f"{sweeps['sweep, no cache'] / wall:>12.2f}x")
    sweep_speedup = sweeps["sweep, no cache"] / sweeps["sweep, warm cache"]
    print(f"target: warm-cache sweep >= {SWEEP_TARGET}x faster: {sweep_speedup:.2f}x "
          f"{'PASS' if sweep_speedup >= SWEEP_TARGET else 'MISS'}", flush=True)
    return {"model": model, "device": name, "dtype": str(engine.loaded.dtype),
            "ready_s": ready, "videos": args.videos, "questions": args.questions,
            "frames": args.frames, "ratio": args.ratio, "ratios": ratios,
            "max_new_tokens": args.max_new_tokens,
            "ms_per_question": {label: 1000 * wall / count for label, wall in walls.items()},
            "reuse_speedup": reuse_speedup, "reuse_target": REUSE_TARGET,
            "sweep_ms_per_question": {label: 1000 * wall / (count * len(ratios))
                                      for label, wall in sweeps.items()},
            "sweep_speedup": sweep_speedup, "sweep_target": SWEEP_TARGET}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="random:llava-onevision-0.5b,random:qwen2-vl-2b")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--ratios", default="1.0,0.25,0.15")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", type=Path, help="also write each model's figures here")
    args = parser.parse_args()
    if not 1 <= args.questions <= len(QUESTIONS):
        parser.error(f"--questions: 1 to {len(QUESTIONS)}")
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for model in args.models.split(","):
            folder = Path(scratch) / model.replace(":", "_").replace("/", "_")
            folder.mkdir()
            results.append(bench_model(model, args, folder))
            if args.json is not None:
                args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
