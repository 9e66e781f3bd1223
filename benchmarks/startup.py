"""How long the commands that need no model take to answer, each in a fresh process.

    python benchmarks/startup.py [--repeats 5]

``vidcom2 --help``, ``--version``, ``models``, ``info`` and a bad option must answer before
torch or transformers are imported; this prints the median wall time of each (and checks
that neither library was imported, by running the same command in-process with an import
guard). Timings are machine-dependent: they are measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "sample_videos" / "color_change.mp4"
COMMANDS = {
    "vidcom2 --help": ["--help"],
    "vidcom2 --version": ["--version"],
    "vidcom2 models": ["models"],
    "vidcom2 info CLIP": ["info", str(CLIP)],
    "vidcom2 ask CLIP q --frames 0 (exit 2)": ["ask", str(CLIP), "q", "--frames", "0"],
    "vidcom2 ask CLIP q --device gpu (exit 2)": ["ask", str(CLIP), "q", "--device", "gpu"],
    "vidcom2 bench CLIP --ratios 2 (exit 2)": ["bench", str(CLIP), "--ratios", "2"],
}
RUN = "import sys; from vidcom2_cli.cli import main; sys.argv[0] = 'vidcom2'; main()"
GUARD = ("import sys; from vidcom2_cli.cli import main; sys.argv[0] = 'vidcom2'\n"
         "try:\n    main()\nexcept SystemExit:\n    pass\n"
         "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
         "sys.stderr.write('HEAVY:' + ','.join(heavy) + '\\n')")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; python {platform.python_version()}")
    print(f"{'command':<44}{'median s':>9}{'min s':>8}  exit  torch/transformers imported")
    for name, argv in COMMANDS.items():
        times, code = [], None
        for _ in range(args.repeats):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", RUN, *argv], capture_output=True,
                                  env=env)
            times.append(time.perf_counter() - start)
            code = done.returncode
        guard = subprocess.run([sys.executable, "-c", GUARD, *argv], capture_output=True,
                               text=True, env=env)
        heavy = guard.stderr.rsplit("HEAVY:", 1)[-1].strip() or "no"
        print(f"{name:<44}{statistics.median(times):>9.3f}{min(times):>8.3f}  {code:>4}  "
              f"{heavy}")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, transformers"], env=env, check=True)
    print(f"(for scale: importing torch and transformers alone takes "
          f"{time.perf_counter() - start:.2f} s here)")


if __name__ == "__main__":
    main()
