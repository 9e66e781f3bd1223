"""Every GPU figure the docs need, in one command: each benchmark as a subprocess with its own
time limit, then one summary (JSON + markdown) of what ran, how long it took and its figures.

    python benchmarks/gpu_suite.py [--out DIR] [--video FILE]     # one GPU, under 8 minutes
    python benchmarks/gpu_suite.py --tiny                          # CPU, tiny models, toy sizes

Parts, in order (docs/gpu.md says what each measures):
  environment        benchmarks/gpu_environment.py: GPU, driver, versions; the install checked
  checkpoints        benchmarks/tiny_checkpoints.py: the tiny fixtures of tests/tiny_models.py
  latency-llava-...  benchmarks/latency.py on random:llava-onevision-7b: 32 frames, bf16,
                     R = 1.0 / 0.25 / 0.15, 16 forced new tokens (issue 26's targets)
  compressor         benchmarks/compressor.py --device cuda
  ask-FAMILY         `vidcom2 ask --json` on each family's tiny fixture: dtype, attention and
                     peak memory as the tool chooses them (--dtype auto --attn auto)
  methods            benchmarks/methods.py: every registered method at R = 0.25
  latency-qwen       benchmarks/latency.py on the Qwen 7B/8B presets
  reuse              benchmarks/reuse.py on random:llava-onevision-7b

``--tiny`` runs the same parts on the CPU with the tiny fixtures in place of the presets and
toy sizes everywhere, so that CI keeps the suite working between GPU loans.

A part that fails or runs past its limit is recorded and the suite goes on; a part not begun
when the suite's ``--deadline`` is near is recorded as skipped. After every part the output
folder holds ``summary.json`` (environment, each part's status, wall time, command and key
figures, issue 26's targets), ``summary.md`` (the same as tables) and ``parts.zip`` (each
part's stdout, stderr and JSON files under PART/). Exit status 0 when every part succeeded,
1 otherwise, 2 for a bad option, 130 when stopped (SIGINT or SIGTERM: the running parts are
stopped and the summary written).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NoReturn

from gpu_figures import READERS, NoFigures
from gpu_processes import archive, last_line, now, queue_take, stop, write_atomically
from gpu_profiles import GPU, TINY, Part, PartResult
from gpu_summary import markdown, targets_of

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
SAMPLE = ROOT / "sample_videos" / "scene_cut.mp4"
# Outside --out: $OUT comes back from the device machine with at most 8 files.
TINY_CHECKPOINTS = Path(tempfile.gettempdir()) / "vidcom2-gpu-suite-tiny"
ASK_QUESTION = "What happens in this video?"
# `vidcom2 ask` as the installed entry point defines it (the same code as the console script).
VIDCOM2 = ("import sys; from importlib.metadata import entry_points; sys.argv[0] = 'vidcom2'; "
           "(cli,) = entry_points(group='console_scripts', name='vidcom2'); cli.load()()")
FORCED_FAILURE = "import sys; sys.exit('forced to fail by gpu_suite.py --fail')"
MIN_START_S = 5.0
DEFAULT_LIMIT_S = 60.0  # a part is not begun with less time than this left before the deadline
STATUS_ORDER = ("ok", "failed", "timeout", "skipped")
# Each part in its own process group, so that it is stopped whole at its limit, yet in the
# suite's session, so that whatever ends the suite's session (the device tool at the end of a
# command) ends the parts too.
OWN_GROUP: dict[str, Any] = ({"process_group": 0} if sys.version_info >= (3, 11)
                             else {"start_new_session": True})


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped: as Ctrl-C
    sys.exit(Suite(args).run())


class OneLineParser(argparse.ArgumentParser):
    """A bad option is one line on stderr (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args() -> argparse.Namespace:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_suite_out"),
                        help="output folder (default: $OUT if set, else ./gpu_suite_out)")
    parser.add_argument("--tiny", action="store_true",
                        help="CPU, tiny fixtures, toy sizes: the same parts in seconds")
    parser.add_argument("--video", type=Path, default=SAMPLE,
                        help="video of the latency and methods parts (default: the sample "
                        "scene_cut.mp4; docs/gpu.md carries a 640x360 one)")
    parser.add_argument("--checkpoints", type=Path,
                        help="folder of tiny checkpoints to reuse and fill (default: "
                        f"{TINY_CHECKPOINTS})")
    parser.add_argument("--families",
                        help="comma-separated families for the ask parts (default: every one)")
    parser.add_argument("--only", help="comma-separated part names or patterns (ask-*) to run; "
                        "name checkpoints too where a chosen part needs the tiny fixtures (ask-*, "
                        "and every model part with --tiny) and --checkpoints lacks them")
    parser.add_argument("--limit", action="append", default=[], metavar="PART=SECONDS",
                        help="another time limit for the parts matching PART (repeatable)")
    parser.add_argument("--fail", action="append", default=[], metavar="PART",
                        help="make the parts matching PART fail at once, to check that the "
                        "suite records a failure and goes on (repeatable)")
    parser.add_argument("--deadline", type=float,
                        help="seconds for the whole suite (default: 420 on a GPU, 1200 tiny)")
    parser.add_argument("--jobs", type=int, help="ask parts run at a time (default: 4 GPU, "
                        "2 tiny)")
    parser.add_argument("--list", action="store_true",
                        help="print each part's limit and command, run nothing (the ask parts: "
                        "for --families, or the families --checkpoints holds)")
    args = parser.parse_args()
    if not args.video.is_file():
        parser.error(f"--video: {args.video} is not a file")
    try:
        args.limit = dict(parse_limit(text) for text in args.limit)
    except ValueError as error:
        parser.error(f"--limit: {error}")
    if args.deadline is not None and args.deadline <= 0:
        parser.error("--deadline: must be above 0")
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs: must be at least 1")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out: {args.out} is not a folder")
    return args


def parse_limit(text: str) -> tuple[str, float]:
    pattern, _, seconds = text.partition("=")
    try:
        value = float(seconds)
    except ValueError:
        raise ValueError(f"expected PART=SECONDS, got {text!r}") from None
    if not pattern or value <= 0:
        raise ValueError(f"expected PART=SECONDS with SECONDS above 0, got {text!r}")
    return pattern, value


def matches(name: str, patterns: list[str] | None) -> bool:
    return patterns is None or any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def python(script: str, *arguments: str) -> tuple[str, ...]:
    return (sys.executable, str(BENCHMARKS / script), *arguments)


class Suite:
    """Runs the parts, keeps the deadline, and rewrites the summary after every part."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        base = TINY if args.tiny else GPU
        self.profile = replace(base, deadline_s=args.deadline or base.deadline_s,
                               jobs=args.jobs or base.jobs)
        self.out: Path = args.out
        self.checkpoints: Path = (args.checkpoints or TINY_CHECKPOINTS).resolve()
        self.families = ([name.strip() for name in args.families.split(",") if name.strip()]
                         if args.families else None)
        self.only = [name.strip() for name in args.only.split(",")] if args.only else None
        self.planned: list[str] = []  # part names in the order they were planned
        self.recorded: dict[str, PartResult] = {}
        self.started = time.monotonic()
        self.started_at = now()
        self.finished_at: str | None = None
        self.interrupted = False
        self.live: set[subprocess.Popen[bytes]] = set()  # parts running now
        self.live_lock = threading.Lock()

    # --- the plan ---------------------------------------------------------------------------

    def model(self, name: str) -> str:
        """A preset on the GPU; the tiny checkpoint of that family in --tiny mode."""
        return str(self.checkpoints / name) if self.profile.mode == "tiny" else name

    def sizes(self) -> tuple[str, ...]:
        profile = self.profile
        return ("--device", profile.device, "--dtype", profile.dtype,
                "--frames", str(profile.frames))

    def latency(self, models: list[str]) -> tuple[str, ...]:
        profile = self.profile
        return python("latency.py", "--models", ",".join(self.model(name) for name in models),
                      *self.sizes(), "--video", str(self.args.video),
                      "--ratios", "1.0,0.25,0.15", "--attn", "sdpa",
                      "--new-tokens", str(profile.new_tokens), "--repeats", str(profile.repeats),
                      "--warmup", str(profile.warmup), "--json", "{folder}/latency.json")

    def first_parts(self) -> list[Part]:
        """The parts whose plan needs nothing from another part."""
        profile = self.profile
        families = self.fixture_families()
        return [
            Part("environment", "environment", python(
                "gpu_environment.py", "--json", "{folder}/environment.json",
                *(() if profile.mode == "tiny" else ("--require-cuda",)))),
            Part("checkpoints", "checkpoints", python(
                "tiny_checkpoints.py", str(self.checkpoints), "--json",
                "{folder}/checkpoints.json",
                *(() if families is None else ("--families", ",".join(families))))),
            Part("latency-llava-onevision-7b", "latency", self.latency([profile.llava])),
            Part("compressor", "compressor", python(
                "compressor.py", "--device", profile.device, *profile.compressor,
                "--json", "{folder}/compressor.json")),
        ]

    def later_parts(self) -> list[Part]:
        """The ask parts (one per family the checkpoints part built), then the rest."""
        profile = self.profile
        parts = [Part(f"ask-{family}", "ask", (
            sys.executable, "-c", VIDCOM2, "ask", str(SAMPLE), ASK_QUESTION,
            "--model", str(self.checkpoints / family), "--frames", str(profile.ask_frames),
            "--max-new-tokens", str(profile.ask_new_tokens), "--device", profile.device,
            "--dtype", "auto", "--attn", "auto", "--json"), parallel=True)
            for family in self.ask_families()]
        return [*parts,
                Part("methods", "methods", python(
                    "methods.py", "--models", self.model(profile.llava), *self.sizes(),
                    "--video", str(self.args.video), "--ratios", "1.0,0.25", "--methods", "all",
                    "--new-tokens", "2", "--repeats", str(profile.repeats),
                    "--warmup", str(profile.warmup), "--json", "{folder}/methods.json")),
                Part("latency-qwen", "latency", self.latency(list(profile.qwen))),
                Part("reuse", "reuse", python(
                    "reuse.py", "--models", self.model(profile.llava), *self.sizes(),
                    "--ratio", "0.25", *profile.reuse, "--json", "{folder}/reuse.json"))]

    def fixture_families(self) -> list[str] | None:
        """The families the checkpoints part builds: None for every one; with --families,
        those and (in --tiny mode) the ones standing in for the presets."""
        if self.families is None:
            return None
        stand_ins = [self.profile.llava, *self.profile.qwen] if self.profile.mode == "tiny" else []
        return list(dict.fromkeys([*self.families, *stand_ins]))

    def ask_families(self) -> list[str]:
        """--families, else what the checkpoints part built, else what the folder holds."""
        if self.families:
            return self.families
        built = self.result("checkpoints")
        if built is not None and built.figures.get("families"):
            return list(built.figures["families"])
        return sorted(path.name for path in self.checkpoints.glob("*")
                      if (path / "config.json").is_file())

    def chosen(self, parts: list[Part]) -> list[Part]:
        """The parts --only picks, with their time limits, and --fail applied."""
        limits = {**self.profile.limits, **self.args.limit}  # later patterns win
        chosen = []
        for part in parts:
            if not matches(part.name, self.only):
                continue
            limit = next((seconds for pattern, seconds in reversed(limits.items())
                          if fnmatch.fnmatchcase(part.name, pattern)), DEFAULT_LIMIT_S)
            command = part.command
            if any(fnmatch.fnmatchcase(part.name, pattern) for pattern in self.args.fail):
                command = (sys.executable, "-c", FORCED_FAILURE)
            chosen.append(replace(part, command=command, limit_s=limit))
        return chosen

    # --- running ----------------------------------------------------------------------------

    def list_parts(self) -> int:
        for part in self.chosen(self.first_parts()) + self.chosen(self.later_parts()):
            print(f"{part.name} (limit {part.limit_s:.3g} s): {shlex.join(part.command)}")
        return 0

    def run(self) -> int:
        if self.args.list:
            return self.list_parts()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "parts.zip").unlink(missing_ok=True)
        shutil.rmtree(self.out / "running", ignore_errors=True)  # left by a run stopped earlier
        self.say(f"gpu_suite ({self.profile.mode}): output in {self.out}, deadline "
                 f"{self.profile.deadline_s:.0f} s")
        self.write_summary()
        try:
            self.run_parts(self.chosen(self.first_parts()))
            self.run_parts(self.chosen(self.later_parts()))  # the ask parts follow checkpoints
        except KeyboardInterrupt:
            self.interrupted = True
            with self.live_lock:
                running = list(self.live)
            for process in running:
                stop(process)
            self.say("interrupted: the parts running now were stopped")
        self.finished_at = now()
        self.write_summary()
        counts = {status: sum(result.status == status for result in self.results)
                  for status in STATUS_ORDER}
        self.say(f"summary: {self.out / 'summary.md'} ("
                 + ", ".join(f"{count} {status}" for status, count in counts.items() if count)
                 + ")")
        if self.interrupted:
            return 130
        return 0 if all(result.status == "ok" for result in self.results) else 1

    @property
    def results(self) -> list[PartResult]:
        """The parts recorded so far, in plan order (parallel ones may end in another)."""
        return [self.recorded[name] for name in self.planned if name in self.recorded]

    def run_parts(self, parts: list[Part]) -> None:
        """In order; consecutive parallel parts run up to --jobs at a time."""
        self.planned += [part.name for part in parts]
        index = 0
        while index < len(parts):
            group = [parts[index]]
            while (group[-1].parallel and index + len(group) < len(parts)
                   and parts[index + len(group)].parallel):
                group.append(parts[index + len(group)])
            index += len(group)
            if len(group) == 1 or not group[0].parallel:
                for part in group:
                    self.record(self.launch(part))
                continue
            with ThreadPoolExecutor(max_workers=self.profile.jobs) as pool:
                pending: set[Future[PartResult]] = set()
                queue = iter(group)
                for part in queue_take(queue, self.profile.jobs):
                    pending.add(pool.submit(self.launch, part))
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        self.record(future.result())
                        for part in queue_take(queue, 1):
                            pending.add(pool.submit(self.launch, part))

    def left_s(self) -> float:
        return self.profile.deadline_s - (time.monotonic() - self.started)

    def launch(self, part: Part) -> PartResult:
        """Run one part's subprocess in its own folder (thread-safe: touches only that folder)."""
        result = PartResult(part.name, part.kind, shlex.join(part.command), part.limit_s)
        left = self.left_s()
        if left < MIN_START_S:
            result.error = f"not begun: {max(left, 0):.0f} s left before the suite's deadline"
            return result
        limit = min(part.limit_s, left)
        folder = self.out / "running" / part.name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        command = [argument.replace("{folder}", str(folder.resolve()))
                   for argument in part.command]
        result.command = shlex.join(command)
        started = time.monotonic()
        with (folder / "stdout.txt").open("wb") as stdout, \
                (folder / "stderr.txt").open("wb") as stderr:
            process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL,
                                       stdout=stdout, stderr=stderr, **OWN_GROUP,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
            try:
                with self.live_lock:
                    self.live.add(process)
                self.say(f"{part.name}: started (limit {limit:.3g} s)")
                result.returncode = process.wait(timeout=limit)
                result.status = "ok" if result.returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                stop(process)
                result.returncode = process.returncode
                result.status = "timeout"
                result.error = f"ran past its limit of {limit:.3g} s"
            except KeyboardInterrupt:  # the suite was stopped while it waited for this part
                stop(process)
                raise
            finally:
                with self.live_lock:
                    self.live.discard(process)
        result.wall_s = time.monotonic() - started
        return result

    def record(self, result: PartResult) -> None:
        """Read the part's figures, file its folder into parts.zip, rewrite the summary."""
        folder = self.out / "running" / result.name
        if folder.is_dir():
            reader = READERS[result.kind]
            try:
                result.figures = reader.read(folder)
                result.brief = reader.brief(result.figures)
            except NoFigures as problem:
                if result.status == "ok":
                    result.status = "failed"
                    result.error = f"no figures: {problem}"
            except Exception as problem:  # a reader's slip must not stop the suite
                result.status = "failed" if result.status == "ok" else result.status
                result.error = result.error or f"unreadable figures: {problem!r}"
            if result.status == "failed" and result.error is None:
                result.error = last_line(folder / "stderr.txt") or f"exit {result.returncode}"
            result.files = archive(folder, self.out / "parts.zip", result.name)
            shutil.rmtree(folder, ignore_errors=True)
            with_running = self.out / "running"
            if with_running.is_dir() and not any(with_running.iterdir()):
                with_running.rmdir()
        self.recorded[result.name] = result
        self.say(f"{result.name}: {result.status} in {result.wall_s:.1f} s"
                 + (f" ({result.error})" if result.error else ""))
        self.write_summary()

    def result(self, name: str) -> PartResult | None:
        return self.recorded.get(name)

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f} s] {text}", flush=True)

    # --- the summary ------------------------------------------------------------------------

    def write_summary(self) -> None:
        environment = self.result("environment")
        summary = {
            "suite": {"mode": self.profile.mode, "started": self.started_at,
                      "finished": self.finished_at,
                      "wall_s": round(time.monotonic() - self.started, 1),
                      "deadline_s": self.profile.deadline_s, "jobs": self.profile.jobs,
                      "video": str(self.args.video), "argv": sys.argv[1:],
                      "complete": self.finished_at is not None and not self.interrupted,
                      "interrupted": self.interrupted,
                      "not_recorded": [name for name in self.planned
                                       if name not in self.recorded]},
            "environment": environment.figures if environment else {},
            "parts": [asdict(result) for result in self.results],
            "targets": [{"part": result.name, "model": model, **check}
                        for result in self.results if result.kind == "latency"
                        for model, check in targets_of(result)],
        }
        write_atomically(self.out / "summary.json", json.dumps(summary, indent=2))
        write_atomically(self.out / "summary.md", "\n".join(markdown(summary, self.results)) + "\n")


if __name__ == "__main__":
    main()
