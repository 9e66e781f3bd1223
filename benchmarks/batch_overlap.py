"""Per-video time of `vidcom2 batch` with and without decoding ahead on CPU threads.

    python benchmarks/batch_overlap.py [--model PATH_OR_ID] [--items 24] [--batch-size 4]
        [--frames 32] [--prefetch N] [--device auto] [--max-new-tokens 32] [--rounds 2]

Runs the same batch (the sample videos and ../shared/videos/big_buck_bunny.mp4 when present,
in turn) with --prefetch 0 and with --prefetch N, the latter on one worker thread (overlap
alone) and on the usual PREFETCH_WORKERS threads (overlap plus decoding videos in parallel),
side by side in one process, after one unmeasured warm-up batch, the order reversed every other
of --rounds (A B C, C B A, ...). Prints the
end-to-end wall time per video (run wall time / items, median over rounds) of both and their
ratio, and where the time goes: each stage's total over the run divided by the items, from the
records' timing_ms (prefill and decode once per generate call, shared by its batch). Without
--model, a tiny random-weight checkpoint is built offline (as the tests do), so it runs
anywhere; its model time is small next to decoding, which bounds what overlap can save.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from tiny_models import make_tiny_checkpoint  # noqa: E402

import vidcom2_cli.group_stream as pipeline_module  # noqa: E402
from vidcom2_cli.batch.input import parse_lines  # noqa: E402
from vidcom2_cli.batch.local import BatchOptions, run_batch  # noqa: E402
from vidcom2_cli.batch.output import ResultWriter  # noqa: E402
from vidcom2_cli.engine import Engine  # noqa: E402
from vidcom2_cli.models import LoadOptions  # noqa: E402
from vidcom2_cli.options import CompressionOptions, GenerationOptions, SamplingOptions  # noqa: E402

SHARED_VIDEO = ROOT.parent / "shared" / "videos" / "big_buck_bunny.mp4"
QUESTIONS = ("What happens in this video?", "What colour is the ball at the end?",
             "How many objects are there?", "Describe the scene.")
CPU_STAGES = ("video_decode", "preprocess")
MODEL_STAGES = ("vision", "compress", "prefill", "decode")
PER_CALL = ("prefill", "decode")  # measured once per generate call, copied to its items


def videos() -> list[Path]:
    found = sorted((ROOT / "sample_videos").glob("*.mp4"))
    return ([SHARED_VIDEO] if SHARED_VIDEO.is_file() else []) + found


def input_lines(count: int) -> bytes:
    clips = videos()
    rows = [{"id": f"v{index:03d}", "video": str(clips[index % len(clips)]),
             "question": QUESTIONS[index % len(QUESTIONS)]} for index in range(count)]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def run(engine: Engine, lines: bytes, options: BatchOptions, out: Path) -> tuple[float, list]:
    """Wall seconds of one whole run_batch, and its records."""
    items = parse_lines(lines, ROOT)
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    with ResultWriter.open(str(out)) as writer:
        run_batch(engine, items, options, writer)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in out.read_text().splitlines()]
    failed = [record for record in records if "error" in record]
    if failed:
        raise SystemExit(f"item {failed[0]['id']} failed: {failed[0]['error']}")
    return wall, records


def stage_ms_per_video(records: list[dict], batch_size: int) -> dict[str, float]:
    """Each stage's total over the run / items; per-call stages counted once per batch."""
    totals = dict.fromkeys((*CPU_STAGES, *MODEL_STAGES), 0.0)
    for index, record in enumerate(records):
        for stage in totals:
            if stage not in PER_CALL or index % batch_size == 0:
                totals[stage] += record["timing_ms"][stage]
    return {stage: total / len(records) for stage, total in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="hub id or checkpoint directory (default: a tiny "
                        "random-weight qwen2_vl checkpoint built offline)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--items", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--prefetch", type=int, default=None,
                        help="items decoded ahead in the overlapped run (default 2 x batch size)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-new-tokens", type=int, default=32,
                        help="tokens generated per item (forced)")
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or str(make_tiny_checkpoint("qwen2_vl", Path(scratch) / "tiny"))
        engine = Engine.load(model, LoadOptions(device=args.device))
        generation = GenerationOptions(max_new_tokens=args.max_new_tokens,
                                       min_new_tokens=args.max_new_tokens)
        base = BatchOptions(SamplingOptions(frames=args.frames),
                            CompressionOptions(ratio=args.ratio), generation, args.batch_size,
                            reuse=False)  # every item on its own: overlap alone is measured
        prefetch = base.prefetch_items if args.prefetch is None else args.prefetch
        if prefetch < 1:
            parser.error("--prefetch: the overlapped run needs at least 1")
        workers = min(prefetch, pipeline_module.PREFETCH_WORKERS)
        # label -> (options, worker threads); 1 thread separates overlap from parallel decoding
        modes = {"prefetch 0": (replace(base, prefetch=0), 0),
                 f"{prefetch}, 1 thread": (replace(base, prefetch=prefetch), 1),
                 f"{prefetch}, {workers} threads": (replace(base, prefetch=prefetch), workers)}
        if workers == 1:
            del modes[f"{prefetch}, 1 thread"]
        lines = input_lines(args.items)
        out = Path(scratch) / "out.jsonl"

        device = engine.device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"model {model if args.model else 'tiny random qwen2_vl'} on {name} "
              f"({os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
              f"load average {os.getloadavg()[0]:.2f} before the run); {args.items} items over "
              f"{', '.join(path.name for path in videos())}; {args.frames} frames, batch size "
              f"{args.batch_size}, {args.max_new_tokens} new tokens, ratio {args.ratio}")
        run(engine, input_lines(args.batch_size), base, out)  # warm-up
        walls: dict[str, list[float]] = {label: [] for label in modes}
        records: dict[str, list[dict]] = {}
        for round_ in range(args.rounds):
            for label in (list(modes) if round_ % 2 == 0 else list(modes)[::-1]):
                options, pipeline_module.PREFETCH_WORKERS = modes[label]
                wall, records[label] = run(engine, lines, options, out)
                walls[label].append(wall)

    per_video = {label: 1000.0 * statistics.median(times) / args.items
                 for label, times in walls.items()}
    stages = {label: stage_ms_per_video(records[label], args.batch_size) for label in modes}
    rows = [("end-to-end wall", per_video),
            *((f"  {stage}", {label: stages[label][stage] for label in modes})
              for stage in (*CPU_STAGES, *MODEL_STAGES)),
            *((title, {label: sum(stages[label][stage] for stage in group) for label in modes})
              for title, group in (("  CPU prep (decode+prep.)", CPU_STAGES),
                                   ("  model (vision..decode)", MODEL_STAGES)))]
    print(f"\n{'ms per video':<27}" + "".join(f"{label:>17}" for label in modes))
    for title, values in rows:
        print(f"{title:<27}" + "".join(f"{values[label]:>17.1f}" for label in modes))
    print(f"{'speed-up vs prefetch 0':<27}" + "".join(
        f"{per_video['prefetch 0'] / per_video[label]:>16.2f}x" for label in modes))
    print(f"{'wall of each round':<27}" + "".join(
        f"{'/'.join(f'{1000 * t / args.items:.0f}' for t in walls[label]):>17}"
        for label in modes))
    print("Stage times are each item's own. With prefetch, decoding and preprocessing run on "
          "worker threads beside the model (which stays on the main thread), so on a CPU they "
          "also compete with it for cores.")

if __name__ == "__main__":
    main()
