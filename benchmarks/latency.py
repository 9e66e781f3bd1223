"""Real-size latency of the whole pipeline, full vs compressed, side by side in one run.

    python benchmarks/latency.py                                   # GPU: LLaVA-OV-7B, 32 frames
    python benchmarks/latency.py --models random:qwen2-vl-7b,random:qwen3-vl-8b
    python benchmarks/latency.py --models 2026     # Qwen3.5-9B, Qwen3-VL-30B-A3B, Qwen3.5-35B-A3B
    python benchmarks/latency.py --device cpu --models random:llava-onevision-0.5b \
        --frames 8 --dtype float32 --repeats 1

Random-weight presets (``random:NAME``) have the real architectures, so shapes and timings
are real without any download; a hub id or checkpoint directory works too. Every ratio
generates the same forced number of tokens. For each model and ratio it prints the vision
encoder, compression, prefill, decode, LLM generation (prefill + decode) and end-to-end
milliseconds (medians) and the peak memory, then checks the targets at R = 0.25: LLM
generation at least 75% below R = 1.0, compression under 1% of end to end, peak memory not
above R = 1.0, and how long the model took to be ready (built or loaded). ``--json FILE``
also writes every row with the machine description (after each model).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import time
from pathlib import Path

import torch
import transformers
from machine import cpu_model

from vidcom2_cli.bench import BenchRow, parse_floats, run_bench
from vidcom2_cli.engine import Engine
from vidcom2_cli.models import LoadOptions
from vidcom2_cli.options import GenerationOptions, SamplingOptions
from vidcom2_cli.report import bench_rows_to_json, megabytes
from vidcom2_cli.timing import synchronize
from vidcom2_cli.work import Request

SAMPLE = Path(__file__).resolve().parents[1] / "sample_videos" / "scene_cut.mp4"
TARGET_RATIO = 0.25
# Names --models expands to lists of presets. The 2026 models need a large GPU: in bf16,
# about 19 GB (Qwen3.5-9B), 62 GB (Qwen3-VL-30B-A3B) and 70 GB (Qwen3.5-35B-A3B) of weights.
PRESET_GROUPS = {
    "2025": ["random:llava-onevision-7b", "random:qwen2-vl-7b", "random:qwen2.5-vl-7b",
             "random:qwen3-vl-8b"],
    "2026": ["random:qwen3.5-9b", "random:qwen3-vl-30b-a3b", "random:qwen3.5-35b-a3b"],
}


def expand_models(names: str) -> list[str]:
    """Comma-separated models, each a preset, hub id or directory, or a PRESET_GROUPS name."""
    models = []
    for name in (part.strip() for part in names.split(",")):
        models += PRESET_GROUPS.get(name, [name] if name else [])
    return models


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


def change(value: float, reference: float) -> str:
    return f"{100.0 * (value / reference - 1.0):+.1f}%"


def table(model: str, rows: list[BenchRow]) -> list[str]:
    """Markdown rows: one per ratio, changes relative to the same run's R = 1.0 row.

    The prefill change is the whole saving when the answer is one token (a multiple-choice
    letter, as in the paper's benchmarks); every further token adds a decode step that reads
    all the weights and costs about the same at every ratio.
    """
    full = next(row for row in rows if row.ratio == 1.0)
    lines = []
    for row in rows:
        full_row = row.ratio == 1.0
        prefill = "-" if full_row else change(row.prefill_ms, full.prefill_ms)
        saving = "-" if full_row else change(row.generation_ms, full.generation_ms)
        share = 100.0 * row.compress_ms / row.end_to_end_ms
        lines.append(
            f"| {model} | {row.method} | {row.ratio:g} | {row.visual_kept}/{row.visual_full} "
            f"| {row.vision_ms:.1f} | {row.compress_ms:.2f} | {row.prefill_ms:.1f} | {prefill} "
            f"| {row.decode_ms:.1f} | {row.generation_ms:.1f} | {saving} "
            f"| {row.end_to_end_ms:.1f} | {share:.2f}% "
            f"| {megabytes(row.peak_memory_bytes)} ({row.memory_source}) |")
    return lines


def check_targets(rows: list[BenchRow]) -> list[str]:
    """One line per target at R = 0.25, with the figure and PASS or MISS."""
    full = next(row for row in rows if row.ratio == 1.0)
    lines = []
    for row in rows:
        if row.ratio != TARGET_RATIO:
            continue
        saving = 1.0 - row.generation_ms / full.generation_ms
        share = row.compress_ms / row.end_to_end_ms
        checks = [
            (f"LLM generation {100 * saving:.1f}% lower than R=1 (target >= 75%)",
             saving >= 0.75),
            (f"compression {100 * share:.2f}% of end to end (target < 1%)", share < 0.01),
            (f"peak memory {megabytes(row.peak_memory_bytes)} vs "
             f"{megabytes(full.peak_memory_bytes)} at R=1 (target: not above)",
             row.peak_memory_bytes <= full.peak_memory_bytes),
        ]
        lines += [f"  {row.method} R={row.ratio:g}: {text}: {'PASS' if ok else 'MISS'}"
                  for text, ok in checks]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="random:llava-onevision-7b",
                        help="comma-separated presets (random:NAME), hub ids or directories, "
                        f"or a group: {', '.join(PRESET_GROUPS)}")
    parser.add_argument("--video", type=Path, default=SAMPLE)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--ratios", default="1.0,0.25,0.15")
    parser.add_argument("--methods", default="vidcom2")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--json", type=Path, help="also write the rows and the machine here")
    args = parser.parse_args()

    ratios = parse_floats(args.ratios, "--ratios")
    if TARGET_RATIO not in ratios or 1.0 not in ratios:
        parser.error("--ratios must include 1.0 and 0.25 (the targets compare them)")
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    generation = GenerationOptions(max_new_tokens=args.new_tokens,
                                   min_new_tokens=args.new_tokens)
    options = LoadOptions(device=args.device, dtype=args.dtype, attention=args.attn)
    results = []
    header = None
    lines = ["| model | method | R | visual tokens | vision | compress | prefill "
             "| prefill vs R=1 | decode | LLM | LLM vs R=1 | end to end | compress share "
             "| peak memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    targets = []
    for model in expand_models(args.models):
        started = time.perf_counter()
        engine = Engine.load(model, options)
        synchronize(engine.device)
        load_s = time.perf_counter() - started
        if header is None:
            header = (f"{datetime.date.today()} · {machine(engine.device)} · torch "
                      f"{torch.__version__}, transformers {transformers.__version__} · "
                      f"{engine.loaded.dtype} {engine.loaded.attention} · {args.frames} frames "
                      f"of {args.video.name} · {args.new_tokens} forced new tokens · "
                      f"medians of {args.repeats} after {args.warmup} warm-up · times in ms")
            print(header, flush=True)
        prepared = engine.prepare(Request(str(args.video), "Describe what happens in this video."),
                                  SamplingOptions(frames=args.frames))
        rows = run_bench(engine, prepared, ratios, methods, generation, repeats=args.repeats,
                         warmup=args.warmup)
        label = model + (" (random weights)" if engine.random_weights else "")
        print(f"{model}: ready in {load_s:.1f} s", flush=True)
        targets.append(f"{model}: ready in {load_s:.1f} s")
        lines += table(label, rows)
        targets += check_targets(rows)
        results.append({"model": model, "random_weights": engine.random_weights,
                        "load_s": load_s,
                        "rows": bench_rows_to_json(rows)})
        print("\n".join(lines[-len(rows):]), flush=True)
        if args.json is not None:  # after each model: a run stopped later keeps this one
            args.json.write_text(json.dumps({"machine": header, "results": results}, indent=2))
        del engine, prepared
        gc.collect()
        torch.cuda.empty_cache()
    print()
    print("\n".join(lines))
    print("\n".join(targets))


if __name__ == "__main__":
    main()
