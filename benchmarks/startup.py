"""How long the commands that need no model take to answer, each in a fresh process, and what
importing the model stack costs beside torch and transformers alone.

    python benchmarks/startup.py [--repeats 5] [--imports-only]

``vidcom2 --help``, ``--version``, ``models``, ``info`` and a bad option must answer before
torch or transformers are imported; this prints the median wall time of each (and checks
that neither library was imported, by running the same command in-process with an import
guard). Then ``import vidcom2_cli.engine`` (the engine, the adapters of every family, the
compressors and the decoders: what a command imports before it loads a model) runs in turn
with ``import torch, transformers``, A B A B ..., and the ratio is taken pair by pair, so that
a machine whose speed drifts during the run still compares like with like. CPU seconds (user +
system of the child) move less than wall seconds on a shared machine. Timings are
machine-dependent: they are measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_model

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
IMPORTS = ("import vidcom2_cli.engine", "import torch, transformers")  # A, then B



def timed_run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def compare_imports(repeats: int, env: dict[str, str]) -> None:
    """The engine's import against torch's and transformers' alone, in turn, paired."""
    for code in IMPORTS:  # one warm-up each: the file cache, not the figures
        timed_run([sys.executable, "-c", code], env)
    pairs = [tuple(timed_run([sys.executable, "-c", code], env) for code in IMPORTS)
             for _ in range(repeats)]
    print(f"\nimporting the model stack, {repeats} pairs run in turn (median s, min-max):")
    for index, label in enumerate(IMPORTS):
        walls = [pair[index][0] for pair in pairs]
        cpus = [pair[index][1] for pair in pairs]
        print(f"  {label:<30} wall {statistics.median(walls):6.2f} ({min(walls):.2f}-"
              f"{max(walls):.2f})  cpu {statistics.median(cpus):6.2f} ({min(cpus):.2f}-"
              f"{max(cpus):.2f})")
    wall_ratio = statistics.median(a[0] / b[0] for a, b in pairs)
    cpu_ratio = statistics.median(a[1] / b[1] for a, b in pairs)
    print(f"  {'ratio, median of the pairs':<30} wall {wall_ratio:6.2f}              "
          f"cpu {cpu_ratio:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--imports-only", action="store_true",
                        help="only the import of the model stack against torch and "
                             "transformers")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; python {platform.python_version()}")
    if not args.imports_only:
        time_commands(args.repeats, env)
    compare_imports(args.repeats, env)


def time_commands(repeats: int, env: dict[str, str]) -> None:
    """Each command without a model, in a fresh process."""
    print(f"{'command':<44}{'median s':>9}{'min s':>8}  exit  torch/transformers imported")
    for name, argv in COMMANDS.items():
        times, code = [], None
        for _ in range(repeats):
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


if __name__ == "__main__":
    main()
