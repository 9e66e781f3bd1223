"""Time the vectorised VidCom2 selector against the plain loop-based reference.

    python benchmarks/compressor.py [--repeats 7] [--warmup 1] [--device cpu|cuda]
        [--dtype bfloat16] [--shape 4x16x64 ...] [--json FILE]

Shapes: LLaVA-OV-7B (32 frames x 196 tokens x 3584) and Qwen2-VL-7B (32 frames of a 640x360
clip = 16 temporal units x 299 tokens x 3584), or the ``--shape`` options given instead. Features
are float32 unless ``--dtype`` says otherwise (the models' bf16 output on a GPU). Prints the
median of several runs for each and their ratio, measured side by side in one process;
``--json`` also writes them with the device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_vidcom2 import reference_select

from vidcom2_cli.compression import vidcom2_select

SHAPES = {"llava-onevision-7b": (32, 196, 3584), "qwen2-vl-7b": (16, 299, 3584)}


def parse_shape(text: str) -> tuple[int, int, int]:
    """``UNITSxTOKENSxCHANNELS``, e.g. ``4x16x64``."""
    try:
        units, tokens, channels = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected UNITSxTOKENSxCHANNELS, got {text!r}") from None
    if min(units, tokens, channels) < 1:
        raise argparse.ArgumentTypeError(f"every size must be at least 1, got {text!r}")
    return units, tokens, channels


def median_ms(function, repeats: int, device: torch.device, warmup: int = 1) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs before each")
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--shape", type=parse_shape, action="append",
                        help="UNITSxTOKENSxCHANNELS instead of the real sizes (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the timings and the device here")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    shapes = ({f"given-{index}": shape for index, shape in enumerate(args.shape, 1)}
              if args.shape else SHAPES)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}, torch threads: {torch.get_num_threads()}, ratio {args.ratio}, "
          f"{args.dtype}")
    print(f"{'shape':<34}{'loop ms':>10}{'vectorised ms':>16}{'speed-up':>10}")
    rows = []
    for label, shape in shapes.items():
        features = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        features = features.to(device=device, dtype=dtype)
        loop = median_ms(lambda f=features: reference_select(f, args.ratio), args.repeats, device,
                         args.warmup)
        fast = median_ms(lambda f=features: vidcom2_select(f, args.ratio), args.repeats, device,
                         args.warmup)
        described = f"{label} {'x'.join(map(str, shape))}"
        print(f"{described:<34}{loop:>10.1f}{fast:>16.2f}{loop / fast:>9.1f}x")
        rows.append({"label": label, "shape": list(shape), "loop_ms": loop,
                     "vectorised_ms": fast, "speedup": loop / fast})
    if args.json is not None:
        args.json.write_text(json.dumps({"device": name, "dtype": args.dtype,
                                         "ratio": args.ratio, "repeats": args.repeats,
                                         "warmup": args.warmup,
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
