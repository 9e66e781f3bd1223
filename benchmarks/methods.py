"""Every compression method (and its +fca variant) side by side, one run per model.

    python benchmarks/methods.py --models random:llava-onevision-0.5b    # CPU-sized
    python benchmarks/methods.py --models random:qwen2-vl-2b --max-pixels 200704
    python benchmarks/methods.py --models random:llava-onevision-7b,random:qwen2.5-vl-7b \
        --frames 32 --device cuda                     # the papers' sizes, on a GPU
    python benchmarks/methods.py --methods all --ratios 1.0,0.25   # every registered method
    python benchmarks/methods.py --methods flashvid --method-option expansion=1.25 \
        --method-option llm_keep=0.3                  # FlashVID's official setting

For each model the video is encoded without a hook (what VidCom2 runs) and then with every
vision signal any method reads, which gives the signals' overhead; the latter encoding is shared
(the encoder time is not part of a method's cost); then each method runs
at each ratio: compression ms and its share of end to end (decode + preprocess + vision +
compression + LLM generation), the visual tokens sent to the language model (kept / full, and
how many dropped tokens were merged into kept ones), the visual tokens left inside the
language model after each in-LLM stage (HoliTom's merge at layer K, DyCoke's decode-time KV
pruning) and the visual KV entries a decoding step attends per layer, prefill ms, LLM ms
(prefill + decode) and peak memory. Ratio 1.0 is the shared baseline. A method that runs
in-LLM stages on the model's family runs a second time with its stages turned off (its
``STAGE_SWITCHES`` option at its "off" value, rows ``holitom (stages off)``, measured against
that run's own R = 1.0), which isolates what the stage itself costs or saves. Random-weight
presets have the real architectures and sizes: the timings and token counts are real, the
answers are not.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
from pathlib import Path

import torch
from latency import machine

from vidcom2_cli.bench import BenchRow, parse_floats, run_bench
from vidcom2_cli.compression import METHODS, llm_stages
from vidcom2_cli.engine import Engine
from vidcom2_cli.models import LoadOptions
from vidcom2_cli.options import GenerationOptions, SamplingOptions
from vidcom2_cli.report import megabytes
from vidcom2_cli.work import Request

SAMPLE = Path(__file__).resolve().parents[1] / "sample_videos" / "scene_cut.mp4"
DEFAULT_METHODS = [name for name in METHODS if not name.startswith(("random", "uniform"))
                   and name != "vidcom2+flat"]
# the options that turn each method's in-LLM stages off, with their "off" value: HoliTom's inner
# merge, DyCoke's KV pruning, FlashVID's pruning
STAGE_SWITCHES = {"inner_merge": 0.0, "kv_prune": 0.0, "llm_keep": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="random:llava-onevision-0.5b")
    parser.add_argument("--video", type=Path, default=SAMPLE)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--ratios", default="1.0,0.25,0.15")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="comma-separated methods, or 'all' for every registered one")
    parser.add_argument("--new-tokens", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--min-pixels", type=int, help="Qwen families: frame area floor")
    parser.add_argument("--max-pixels", type=int, help="Qwen families: frame area cap")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--stages-off", action=argparse.BooleanOptionalAction, default=True,
                        help="also run each method with in-LLM stages with them turned off")
    parser.add_argument("--method-option", action="append", default=[], metavar="NAME=VALUE",
                        help="a method option for every method that has it (repeatable)")
    args = parser.parse_args()

    ratios = parse_floats(args.ratios, "--ratios")
    methods = (list(METHODS) if args.methods == "all"
               else [name.strip() for name in args.methods.split(",") if name.strip()])
    overrides = tuple(_option(text) for text in args.method_option)
    generation = GenerationOptions(max_new_tokens=args.new_tokens,
                                   min_new_tokens=args.new_tokens)
    lines = ["| model | method | R | visual tokens sent | kept share | merged | in-LLM stages "
             "| decode visual KV | compress ms | compress share | prefill ms | prefill vs R=1 "
             "| LLM ms | LLM vs R=1 | end to end ms | peak memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    results = []
    for model in (name.strip() for name in args.models.split(",") if name.strip()):
        engine = Engine.load(model, LoadOptions(device=args.device, dtype=args.dtype,
                                                attention="sdpa"))
        prepared = engine.prepare(Request(str(args.video), "Describe what happens."),
                                  SamplingOptions(frames=args.frames,
                                                  min_pixels=args.min_pixels,
                                                  max_pixels=args.max_pixels))
        engine.encode_prepared(prepared)  # warm-up
        plain_ms = statistics.median(engine.encode_prepared(prepared).stages_ms["vision"]
                                     for _ in range(args.repeats))  # no hook
        engine.expect_methods(methods)
        rows = run_bench(engine, prepared, ratios, methods, generation, repeats=args.repeats,
                         warmup=args.warmup, method_options=overrides)
        full = next(row for row in rows if row.ratio == 1.0)
        print(f"{model}: {machine(engine.device)}, {engine.loaded.dtype}, {args.frames} frames; "
              f"vision encoder {plain_ms:.0f} ms without a hook, {full.vision_ms:.0f} ms with "
              f"every signal read ({100.0 * (full.vision_ms / plain_ms - 1.0):+.1f}%)",
              flush=True)
        runs = [("", rows)]
        profile = engine.adapter.compression_profile
        staged = _staged(methods, profile, overrides) if args.stages_off else {}
        if staged:
            switches = {name: STAGE_SWITCHES[name] for names in staged.values()
                        for name in names}
            kept = [(name, value) for name, value in overrides if name not in switches
                    and any(name in METHODS[method].spec.options_for(profile)
                            for method in staged)]
            runs.append((" (stages off)", run_bench(
                engine, prepared, ratios, list(staged), generation, repeats=args.repeats,
                warmup=args.warmup, method_options=(*kept, *switches.items()))))
        for label, measured in runs:
            baseline = next(row for row in measured if row.ratio == 1.0)
            for row in measured:
                if row.ratio == 1.0 and (row is not full or label):
                    continue
                lines.append(_line(model, row, label, baseline))
                print(lines[-1], flush=True)
        results.append({"model": model, "machine": machine(engine.device),
                        "rows": [vars(row) for row in rows],
                        "stages_off_rows": [vars(row) for row in runs[-1][1]] if staged else []})
        if args.json is not None:  # after each model: a run stopped later keeps this one
            args.json.write_text(json.dumps(results, indent=2, default=str))
        del engine, prepared
        gc.collect()
        torch.cuda.empty_cache()
    print()
    print("\n".join(lines))


def _option(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    return name.strip(), float(value)


def _staged(methods: list[str], profile: str, overrides: tuple[tuple[str, float], ...]
            ) -> dict[str, list[str]]:
    """The methods that run in-LLM stages on ``profile`` (with ``overrides``), each with its
    options that turn them off."""
    staged = {}
    for method in methods:
        options = METHODS[method].spec.options_for(profile)
        mine = {name: value for name, value in overrides if name in options}
        switches = [name for name in STAGE_SWITCHES if name in options]
        if llm_stages(method, profile, mine) and switches:
            staged[method] = switches
    return staged


def _line(model: str, row: BenchRow, label: str, full: BenchRow) -> str:
    """One markdown row; prefill and LLM time against ``full``, the R = 1.0 run measured
    beside it."""
    share = 100.0 * row.compress_ms / row.end_to_end_ms
    method = "(full)" if row.ratio == 1.0 else f"{row.method}{label}"
    return (f"| {model} | {method} | {row.ratio:g} | {row.visual_kept}/{row.visual_full} "
            f"| {100.0 * row.visual_kept / row.visual_full:.1f}% | {row.merged_tokens} "
            f"| {_stages(row.llm_stages)} | {row.visual_kv_attended:.0f} "
            f"| {row.compress_ms:.2f} | {share:.2f}% | {row.prefill_ms:.0f} "
            f"| {100.0 * (row.prefill_ms / full.prefill_ms - 1.0):+.0f}% "
            f"| {row.generation_ms:.0f} "
            f"| {100.0 * (row.generation_ms / full.generation_ms - 1.0):+.0f}% "
            f"| {row.end_to_end_ms:.0f} | {megabytes(row.peak_memory_bytes)} |")


def _stages(stages: list[dict]) -> str:
    """``merge@18: 633`` (visual tokens left), ``kv-prune@3: 126 (4/31 steps)`` (visual KV
    entries a pruned step attends, and how many steps pruned); ``-`` for none."""
    parts = []
    for stage in stages:
        steps = "" if stage["steps"] is None else (
            f" ({stage['pruned_steps']}/{stage['steps']} steps)")
        parts.append(f"{stage['stage']}: {stage['visual']:.0f}{steps}")
    return ", ".join(parts) or "-"


if __name__ == "__main__":
    main()
