"""What an in-LLM stage costs or saves: the same plan answered with the stage on and off,
interleaved in one process (on, off, on, off, ...), medians.

    python benchmarks/inllm_overhead.py                       # LLaVA-OV-0.5B, 4 frames
    python benchmarks/inllm_overhead.py --models random:llava-onevision-7b --frames 2
    python benchmarks/inllm_overhead.py --device cuda --frames 32 --new-tokens 64

For each method with an in-LLM stage (HoliTom's merge at layer 18, FlashVID's pruning at layer
20 with ``llm_keep=0.3``, DyCoke's decode-time KV pruning at layer 3) the video is encoded once
and answered with each setting; both keep the same tokens (the stage options change nothing
before the language model), so the difference is the stage alone: the layer-by-layer decoder loop,
the attention row it records, the stage itself, and the smaller prefill or KV view it leaves.
Alternating the runs spreads a busy machine's slow moments over both settings.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from latency import machine

from vidcom2_cli.engine import Engine
from vidcom2_cli.models import LoadOptions
from vidcom2_cli.options import CompressionOptions, GenerationOptions, SamplingOptions
from vidcom2_cli.work import Request

SAMPLE = Path(__file__).resolve().parents[1] / "sample_videos" / "scene_cut.mp4"
# (method, options with the stage on, options with it off)
SETTINGS = (
    ("holitom", (("inner_merge", 0.5),), (("inner_merge", 0.0),)),
    ("flashvid", (("llm_keep", 0.3),), (("llm_keep", 1.0),)),
    ("dycoke", (("kv_prune", 0.8),), (("kv_prune", 0.0),)),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="random:llava-onevision-0.5b")
    parser.add_argument("--video", type=Path, default=SAMPLE)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--methods", default=",".join(method for method, _, _ in SETTINGS),
                        help="comma-separated, of: holitom, flashvid, dycoke")
    args = parser.parse_args()
    chosen = {name.strip() for name in args.methods.split(",")}

    generation = GenerationOptions(max_new_tokens=args.new_tokens,
                                   min_new_tokens=args.new_tokens)
    print("| model | method | stage (visual tokens left) | visual tokens sent "
          "| prefill ms on / off | decode ms/token on / off | LLM ms on / off |")
    print("|---|---|---|---|---|---|---|")
    for model in (name.strip() for name in args.models.split(",") if name.strip()):
        engine = Engine.load(model, LoadOptions(device=args.device, dtype=args.dtype,
                                                attention="sdpa"))
        print(f"<!-- {model}: {machine(engine.device)}, {engine.loaded.dtype}, {args.frames} "
              f"frames, R = {args.ratio}, {args.new_tokens} new tokens, medians of "
              f"{args.repeats} interleaved runs after one warm-up each -->", flush=True)
        prepared = engine.prepare(Request(str(args.video), "Describe what happens."),
                                  SamplingOptions(frames=args.frames))
        for method, on_options, off_options in SETTINGS:
            if method not in chosen:
                continue
            settings = [CompressionOptions(args.ratio, method, method_options=options)
                        for options in (on_options, off_options)]
            for options in settings:
                engine.accept(options)
            encoded = engine.encode_prepared(prepared)
            times: list[list[tuple[float, float, float]]] = [[], []]
            stage, sent = "-", 0
            for run in range(args.repeats + 1):
                for index, options in enumerate(settings):
                    answer = engine.answer([encoded], options, generation)[0]
                    if index == 0 and answer.tokens.llm is not None:
                        stage = ", ".join(f"{s.stage}: {s.visual:.0f}"
                                          for s in answer.tokens.llm.stages)
                    sent = answer.tokens.visual_kept
                    if run:
                        timing = answer.timing_ms
                        times[index].append((timing["prefill"], timing["decode_per_token"],
                                             timing["llm_generation"]))
            on, off = ([statistics.median(run[part] for run in series) for part in range(3)]
                       for series in times)
            print(f"| {model} | {method} | {stage} | {sent} "
                  f"| {on[0]:,.0f} / {off[0]:,.0f} | {on[1]:,.1f} / {off[1]:,.1f} "
                  f"| {on[2]:,.0f} / {off[2]:,.0f} |", flush=True)
        del engine


if __name__ == "__main__":
    main()
