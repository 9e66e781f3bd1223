"""Soak `vidcom2 batch` under kills: interrupt a long run again and again, resume, check.

    python benchmarks/soak.py [--items 500] [--rounds 8] [--batch-size 2] [--frames 4]
        [--max-new-tokens 4] [--seed 0] [--model PATH_OR_ID] [--device cpu] [--keep DIR]

Writes a JSONL of --items questions over copies of the sample videos (relative paths, resolved
against the JSONL's folder), with bad items mixed in: missing videos, empty questions and
malformed lines. Runs `vidcom2 batch` as a subprocess and cuts it part-way --rounds times,
alternating SIGKILL and SIGINT (Ctrl-C), each at a random moment: after a random number of new
output lines plus a random delay, so it lands anywhere in a batch; some SIGKILLs land during
start-up or the model load. Every later run passes --resume; the last one runs to the end.

After every run it checks the output: only complete JSON lines (a SIGKILL may leave a torn
last line, which the next --resume must cut), SIGINT exits 130 with "interrupted" as the last
stderr line and no traceback. At the end every input id must appear exactly once, and the bad
items as error records. Prints kills, runs, lines, duplicates, missing, wall time; exits 1 when
a check fails. Without --model a tiny random-weight Qwen2-VL checkpoint is built offline, as
the tests do.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from tiny_models import make_tiny_checkpoint  # noqa: E402

SCRIPT = Path(sys.executable).with_name("vidcom2")
QUESTIONS = ("What happens in this video?", "What colour is the ball at the end?",
             "How many squares are there?", "Describe the scene.")


def write_input(folder: Path, count: int) -> tuple[Path, list[str], set[str]]:
    """The JSONL, the ids its output must hold (in order), and those that must be errors."""
    videos = sorted((ROOT / "sample_videos").glob("*.mp4"))
    for video in videos:
        shutil.copy(video, folder / video.name)
    lines, ids, bad = [], [], set()
    for number in range(count):
        item_id = f"q{number:04d}"
        row = {"id": item_id, "video": videos[number % len(videos)].name,
               "question": QUESTIONS[number % len(QUESTIONS)]}
        if number % 97 == 13:
            row["video"] = "no_such_clip.mp4"
        elif number % 89 == 41:
            row["question"] = "   "
        elif number % 151 == 77:  # a malformed line: its id becomes line-<n>
            lines.append('{"id": "' + item_id + '", "video": ')
            item_id = f"line-{len(lines)}"
            ids.append(item_id)
            bad.add(item_id)
            continue
        if number % 97 == 13 or number % 89 == 41:
            bad.add(item_id)
        lines.append(json.dumps(row))
        ids.append(item_id)
    path = folder / "questions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, ids, bad


def scan(path: Path) -> tuple[list[dict], bool]:
    """The output's complete lines (each must be a JSON object with an id) and whether a
    torn last line follows them."""
    data = path.read_bytes() if path.exists() else b""
    complete = data.rfind(b"\n") + 1
    rows = []
    for number, line in enumerate(data[:complete].splitlines(), start=1):
        try:
            row = json.loads(line)
        except ValueError:
            raise SystemExit(f"FAIL: line {number} of {path} is not JSON: {line[:80]!r}") from None
        if not isinstance(row, dict) or "id" not in row:
            raise SystemExit(f"FAIL: line {number} of {path} has no id")
        rows.append(row)
    return rows, complete < len(data)


def line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


class Soak:
    def __init__(self, args: argparse.Namespace, folder: Path, model: str) -> None:
        self.args = args
        self.folder = folder
        self.model = model
        self.out = folder / "results.jsonl"
        self.rng = random.Random(args.seed)
        self.runs = 0
        self.kills: Counter[str] = Counter()
        self.torn = 0  # torn last lines left by SIGKILL and cut by the next --resume
        self.failures: list[str] = []

    def command(self, source: Path) -> list[str]:
        command = [str(SCRIPT), "batch", str(source), "--out", str(self.out), "-m", self.model,
                   "--frames", str(self.args.frames), "--max-new-tokens",
                   str(self.args.max_new_tokens), "--batch-size", str(self.args.batch_size),
                   "--device", self.args.device]
        return [*command, "--resume"] if self.runs else command

    def run(self, source: Path, total: int, sent: signal.Signals | None) -> int:
        """One run of the batch; with ``sent``, cut by that signal at a random moment."""
        log = self.folder / f"stderr-{self.runs}.txt"
        before = line_count(self.out)
        with log.open("wb") as stderr:
            process = subprocess.Popen(self.command(source), stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=stderr)
        self.runs += 1
        early = sent == signal.SIGKILL and self.rng.random() < 0.25
        try:
            if sent is not None and self.wait_for_moment(process, before, total, early):
                process.send_signal(sent)
                self.kills[sent.name] += 1
            returncode = process.wait(timeout=self.args.run_timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        rows, torn = scan(self.out)
        text = log.read_text(errors="replace")
        label = f"run {self.runs} ({sent.name if sent else 'to the end'})"
        print(f"{label}: exit {returncode}, {len(rows) - before} new lines, "
              f"{len(rows)} in all" + (", torn last line" if torn else ""), flush=True)
        if torn:
            if returncode != -signal.SIGKILL:
                self.failures.append(f"{label}: torn last line after exit {returncode}")
            self.torn += 1
        if "Traceback" in text:
            self.failures.append(f"{label}: traceback on stderr: {text[-400:]}")
        if returncode == 130:
            if text.strip().splitlines()[-1:] != ["interrupted"]:
                self.failures.append(f"{label}: exit 130 without 'interrupted': {text[-200:]}")
        elif returncode not in (0, -signal.SIGKILL, -signal.SIGINT):
            # -SIGINT: the signal came as the process was exiting, after Python had put back
            # the default handler (the shell shows 130 either way); the output is checked.
            self.failures.append(f"{label}: exit {returncode}: {text[-400:]}")
        return returncode

    def wait_for_moment(self, process: subprocess.Popen, before: int, total: int,
                        early: bool) -> bool:
        """Wait for a random moment of this run; False if it ended first."""
        if early:  # during start-up or the model load, or just after
            deadline = time.monotonic() + self.rng.uniform(0.2, 8.0)
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    return False
                time.sleep(0.01)
            return True
        remaining = total - before
        target = before + self.rng.randint(1, max(1, remaining // 3))
        while line_count(self.out) < target:
            if process.poll() is not None:
                return False
            time.sleep(0.005)
        time.sleep(self.rng.uniform(0.0, 0.3))  # anywhere in the next batch
        return process.poll() is None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=8, help="interrupted runs (SIGKILL, "
                        "SIGINT, SIGKILL, ...) before the run to the end")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="default: a tiny random-weight Qwen2-VL")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--run-timeout", type=float, default=1800.0)
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()

    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        folder = args.keep
        for stale in folder.glob("results.jsonl"):
            stale.unlink()
    else:
        folder = Path(tempfile.mkdtemp(prefix="vidcom2-soak-"))
    start = time.perf_counter()
    try:
        model = args.model or str(make_tiny_checkpoint("qwen2_vl", folder / "tiny-qwen2-vl"))
        source, ids, bad = write_input(folder, args.items)
        soak = Soak(args, folder, model)
        signals = [signal.SIGKILL, signal.SIGINT]
        for round_number in range(args.rounds):
            soak.run(source, len(ids), signals[round_number % 2])
        for _ in range(3):  # to the end (again if a run fails part-way, which is a failure)
            if soak.run(source, len(ids), None) == 0:
                break
        wall = time.perf_counter() - start

        rows, torn = scan(soak.out)
        written = Counter(str(row["id"]) for row in rows)
        duplicates = sum(count - 1 for count in written.values() if count > 1)
        missing = sorted(set(ids) - set(written))
        unexpected = sorted(set(written) - set(ids))
        errors = {str(row["id"]) for row in rows if "error" in row}
        if torn:
            soak.failures.append("the final output ends with a torn line")
        if errors != bad:
            soak.failures.append(f"error records {sorted(errors ^ bad)[:10]} differ from the "
                                 "bad items")
        print(f"\nitems {len(ids)} ({len(bad)} bad), runs {soak.runs}, kills "
              f"{sum(soak.kills.values())} (SIGKILL {soak.kills['SIGKILL']}, "
              f"SIGINT {soak.kills['SIGINT']}), torn lines cut {soak.torn}")
        print(f"lines {len(rows)}, duplicates {duplicates}, missing {len(missing)}, "
              f"unexpected {len(unexpected)}, error records {len(errors)}, "
              f"wall {wall:.1f} s")
        if duplicates or missing or unexpected:
            soak.failures.append(f"duplicates {duplicates}, missing {missing[:10]}, "
                                 f"unexpected {unexpected[:10]}")
        for failure in soak.failures:
            print(f"FAIL: {failure}")
        print("OK" if not soak.failures else "FAILED")
        return 1 if soak.failures else 0
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
