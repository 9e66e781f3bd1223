"""Build the tiny random-weight checkpoints of tests/tiny_models.py, one folder per family.

    python benchmarks/tiny_checkpoints.py DIR [--families llava_onevision,qwen2_vl] [--json FILE]

Every family by default. A family whose folder already holds a saved checkpoint (config.json and
model.safetensors) is kept as it is, so a folder can be shared between runs. ``--json`` writes,
per family, its folder, whether it was built now and how long that took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import TINY_VISION_SIZES, make_tiny_checkpoint


def is_saved_checkpoint(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--families", default=",".join(TINY_VISION_SIZES),
                        help="comma-separated families (default: every one)")
    parser.add_argument("--json", type=Path, help="also write what was built here")
    args = parser.parse_args()
    families = [name.strip() for name in args.families.split(",") if name.strip()]
    unknown = [name for name in families if name not in TINY_VISION_SIZES]
    if unknown:
        parser.error(f"--families: unknown {', '.join(unknown)}; known: "
                     f"{', '.join(TINY_VISION_SIZES)}")
    report = {}
    for family in families:
        folder = args.folder / family
        started = time.perf_counter()
        built = not is_saved_checkpoint(folder)
        if built:
            make_tiny_checkpoint(family, folder)
        seconds = time.perf_counter() - started
        report[family] = {"path": str(folder), "built": built, "seconds": seconds}
        print(f"{family}: {'built' if built else 'kept'} in {seconds:.1f} s", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"folder": str(args.folder), "families": report},
                                        indent=2))


if __name__ == "__main__":
    main()
