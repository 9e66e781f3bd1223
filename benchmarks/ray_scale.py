"""Items per second of `vidcom2 batch --ray` with 1 and 2 workers (more where the machine has
more GPUs), side by side in one run on one Ray instance.

    python benchmarks/ray_scale.py [--model PATH_OR_ID] [--items 48] [--frames 8]
        [--workers 1,2] [--chunk 4] [--device auto] [--max-new-tokens 8]

The same batch (questions over the sample videos and ../shared/videos/big_buck_bunny.mp4 when
present, three per video) runs once per worker count, after an unmeasured warm-up run of each
pool; the workers are started (and load the model) before the clock starts, so the figure is
the steady-state throughput. Without --model a tiny random-weight Qwen2-VL checkpoint is built
offline, as the tests do. On a CPU machine the workers share its cores (each gets cores / workers
torch threads), so scaling there says more about the host than about Ray.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import ray  # noqa: E402
from tiny_models import make_tiny_checkpoint  # noqa: E402

from vidcom2_cli.batch.input import stream_input  # noqa: E402
from vidcom2_cli.batch.local import BatchOptions  # noqa: E402
from vidcom2_cli.batch.output import ResultWriter  # noqa: E402
from vidcom2_cli.batch.ray import RayOptions, ray_workers, run_ray_batch  # noqa: E402
from vidcom2_cli.models import LoadOptions  # noqa: E402
from vidcom2_cli.options import CompressionOptions, GenerationOptions, SamplingOptions  # noqa: E402

SHARED_VIDEO = ROOT.parent / "shared" / "videos" / "big_buck_bunny.mp4"
QUESTIONS = ("What happens in this video?", "What colour is the main object?",
             "How many objects are there?")


def batch_file(items: int, folder: Path) -> Path:
    videos = sorted((ROOT / "sample_videos").glob("*.mp4"))
    if SHARED_VIDEO.is_file():
        videos.append(SHARED_VIDEO)
    lines = []
    for number in range(items):
        video = videos[(number // len(QUESTIONS)) % len(videos)]
        lines.append(json.dumps({"id": f"item-{number}", "video": str(video),
                                 "question": QUESTIONS[number % len(QUESTIONS)]}))
    path = folder / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def timed(workers, source: Path, options: BatchOptions, ray_options: RayOptions,
          out: Path) -> float:
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    with ResultWriter.open(str(out)) as writer:
        summary = run_ray_batch(workers, stream_input(str(source)), options, ray_options,
                                writer)
    wall = time.perf_counter() - start
    if summary.errors:
        raise SystemExit(f"{summary.errors} items failed")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--items", type=int, default=48)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args()
    counts = [int(count) for count in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        model = args.model or str(make_tiny_checkpoint("qwen2_vl", folder / "tiny"))
        source = batch_file(args.items, folder)
        options = BatchOptions(SamplingOptions(frames=args.frames), CompressionOptions(0.25),
                               GenerationOptions(max_new_tokens=args.max_new_tokens,
                                                 min_new_tokens=args.max_new_tokens))
        ray.init(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        resources = ray.cluster_resources()
        print(f"model {args.model or 'tiny random qwen2_vl'}; {args.items} items, "
              f"{args.frames} frames, chunk {args.chunk}; Ray cluster: "
              f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs "
              f"({os.cpu_count()} cores here)", flush=True)
        rates = {}
        for count in counts:
            ray_options = RayOptions(workers=count, chunk=args.chunk)
            with ray_workers(ray_options, model, LoadOptions(device=args.device)) as workers:
                (folder / "warm").mkdir(exist_ok=True)
                warm = batch_file(2 * args.chunk * count, folder / "warm")
                timed(workers, warm, options, ray_options, folder / "out.jsonl")  # warm-up
                wall = timed(workers, source, options, ray_options, folder / "out.jsonl")
            rates[count] = args.items / wall
            print(f"{count} worker{'s' if count > 1 else ''}: {wall:.1f} s, "
                  f"{rates[count]:.2f} items/s, {rates[count] / rates[counts[0]]:.2f}x",
                  flush=True)
        ray.shutdown()


if __name__ == "__main__":
    main()
