"""Time the vectorised VidCom2 selector against the plain loop-based reference.

    python benchmarks/compressor.py [--repeats 7] [--device cpu|cuda]

Shapes: LLaVA-OV-7B (32 frames x 196 tokens x 3584) and Qwen2-VL-7B (32 frames of a 640x360
clip = 16 temporal units x 299 tokens x 3584). Prints the median of several runs for each and
their ratio, measured side by side in one process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_vidcom2 import reference_select

from vidcom2_cli.compression import vidcom2_select

SHAPES = {"llava-onevision-7b": (32, 196, 3584), "qwen2-vl-7b": (16, 299, 3584)}


def median_ms(function, repeats: int, device: torch.device) -> float:
    function()  # warm-up
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
    parser.add_argument("--ratio", type=float, default=0.25)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}, torch threads: {torch.get_num_threads()}, ratio {args.ratio}")
    print(f"{'shape':<34}{'loop ms':>10}{'vectorised ms':>16}{'speed-up':>10}")
    for label, shape in SHAPES.items():
        features = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(device)
        loop = median_ms(lambda f=features: reference_select(f, args.ratio), args.repeats, device)
        fast = median_ms(lambda f=features: vidcom2_select(f, args.ratio), args.repeats, device)
        described = f"{label} {'x'.join(map(str, shape))}"
        print(f"{described:<34}{loop:>10.1f}{fast:>16.2f}{loop / fast:>9.1f}x")


if __name__ == "__main__":
    main()
