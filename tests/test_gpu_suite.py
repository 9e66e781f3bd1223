"""benchmarks/gpu_suite.py: the GPU figures' command, run at toy size on the CPU (--tiny) so that
it keeps working between GPU loans; and its summary when a part fails or runs too long."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from vidcom2_cli.compression import METHODS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gpu_figures import format_target, latency_targets

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
# The fixtures that stand in for the presets with --tiny, and the families asked.
STAND_INS = ("llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")
ASKED = ("llava_onevision", "qwen3_vl")


def run_suite(*arguments: object, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SUITE), *map(str, arguments)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def shared_checkpoints(tiny_checkpoints) -> Path:
    """The session's tiny checkpoints folder, holding every family the suite needs here."""
    folders = {tiny_checkpoints(family) for family in (*STAND_INS, *ASKED)}
    (parent,) = {folder.parent for folder in folders}
    return parent


def part(summary: dict, name: str) -> dict:
    return next(entry for entry in summary["parts"] if entry["name"] == name)


@pytest.mark.slow
def test_tiny_suite_runs_every_part_and_records_its_figures(tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    done = run_suite("--tiny", "--out", out, "--checkpoints", shared_checkpoints(tiny_checkpoints),
                     "--families", ",".join(ASKED))
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["suite"]["complete"] and summary["suite"]["mode"] == "tiny"
    names = [entry["name"] for entry in summary["parts"]]
    assert names == ["environment", "checkpoints", "latency-llava-onevision-7b", "compressor",
                     *(f"ask-{family}" for family in ASKED), "methods", "latency-qwen", "reuse"]
    for entry in summary["parts"]:
        assert entry["status"] == "ok", entry
        assert entry["figures"] and entry["brief"], entry["name"]
        assert any(name.endswith("stdout.txt") for name in entry["files"]), entry["name"]

    environment = summary["environment"]
    assert environment["problems"] == []
    assert environment["versions"]["transformers"] and environment["gpu"] == {}
    assert set(part(summary, "checkpoints")["figures"]["families"]) == {*STAND_INS, *ASKED}

    for name, models in (("latency-llava-onevision-7b", 1), ("latency-qwen", 3)):
        results = part(summary, name)["figures"]["results"]
        assert len(results) == models
        for result in results:
            assert [row["ratio"] for row in result["rows"]] == [1.0, 0.25, 0.15]
            assert len(result["targets"]) == 6
    assert len([check for check in summary["targets"] if check["part"] == "latency-qwen"]) == 18

    compressor = part(summary, "compressor")["figures"]
    assert compressor["device"] == "CPU" and compressor["rows"][0]["shape"] == [4, 16, 64]

    import torch

    from vidcom2_cli.models.loading import resolve_dtype

    # --dtype auto on this CPU: bf16 where it computes bf16 natively, else fp32
    auto = str(resolve_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    for family in ASKED:
        asked = part(summary, f"ask-{family}")["figures"]
        assert (asked["device"], asked["dtype"], asked["attention"]) == ("cpu", auto, "sdpa")
        assert asked["peak_memory_bytes"] > 0 and asked["memory_source"].startswith("process")
        assert 0 < asked["visual_kept"] < asked["visual_full"]

    (methods,) = part(summary, "methods")["figures"]["results"]
    assert {row["method"] for row in methods["rows"] if row["ratio"] == 0.25} == set(METHODS)

    (reuse,) = part(summary, "reuse")["figures"]["results"]
    assert reuse["reuse_speedup"] > 0 and reuse["sweep_speedup"] > 0

    markdown = (out / "summary.md").read_text()
    assert "## Issue 26 targets at R = 0.25" in markdown
    for name in names:
        assert f"| {name} | ok |" in markdown
    with zipfile.ZipFile(out / "parts.zip") as zipped:
        archived = set(zipped.namelist())
    assert {"methods/methods.json", "latency-qwen/latency.json", "reuse/reuse.json",
            "ask-qwen3_vl/stdout.txt", "environment/environment.json"} <= archived
    assert sorted(path.name for path in out.iterdir()) == ["parts.zip", "summary.json",
                                                          "summary.md"]


def test_a_failed_part_and_a_timed_out_part_are_recorded_and_the_suite_goes_on(
        tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    done = run_suite("--tiny", "--out", out, "--checkpoints", tiny_checkpoints("llava_onevision")
                     .parent, "--families", "llava_onevision", "--only", "compressor,ask-*",
                     "--fail", "compressor", "--limit", "ask-*=0.2", timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["suite"]["complete"]
    failed, timed_out = summary["parts"]
    assert (failed["name"], failed["status"]) == ("compressor", "failed")
    assert "forced to fail" in failed["error"] and failed["returncode"] == 1
    assert (timed_out["name"], timed_out["status"]) == ("ask-llava_onevision", "timeout")
    assert timed_out["limit_s"] == 0.2 and "limit" in timed_out["error"]
    markdown = (out / "summary.md").read_text()
    assert "| compressor | failed |" in markdown
    assert "| ask-llava_onevision | timeout |" in markdown
    assert "compressor: failed" in done.stdout and "ask-llava_onevision: timeout" in done.stdout


def test_parts_not_begun_before_the_deadline_are_recorded_as_skipped(tmp_path):
    out = tmp_path / "out"
    done = run_suite("--tiny", "--out", out, "--only", "environment,compressor", "--deadline", 1,
                     timeout=60)
    assert done.returncode == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [(entry["name"], entry["status"]) for entry in summary["parts"]] == [
        ("environment", "skipped"), ("compressor", "skipped")]
    assert "deadline" in summary["parts"][0]["error"]


def test_a_stopped_suite_stops_its_running_part_and_writes_the_summary(tmp_path):
    out = tmp_path / "out"
    suite = subprocess.Popen([sys.executable, str(SUITE), "--tiny", "--out", str(out), "--only",
                              "environment,compressor"], stdout=subprocess.PIPE, text=True,
                             cwd=ROOT)
    for line in suite.stdout:
        if "environment: started" in line:
            break
    suite.terminate()
    assert suite.wait(timeout=60) == 130
    summary = json.loads((out / "summary.json").read_text())
    assert summary["suite"]["interrupted"] and not summary["suite"]["complete"]
    assert summary["suite"]["not_recorded"] == ["environment", "compressor"]
    assert not [pid for pid in Path("/proc").glob("[0-9]*")  # no part left running
                if str(out) in _command_line(pid)]


def _command_line(process: Path) -> str:
    try:
        return (process / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize("arguments, needle", [
    (["--video", "missing.mp4"], "--video: missing.mp4 is not a file"),
    (["--limit", "ask-*"], "--limit: expected PART=SECONDS"),
    (["--limit", "ask-*=-1"], "--limit: expected PART=SECONDS with SECONDS above 0"),
    (["--deadline", "0"], "--deadline: must be above 0"),
])
def test_bad_options_exit_2_with_one_line(arguments, needle, tmp_path):
    done = run_suite(*arguments, "--out", tmp_path / "out", timeout=60)
    assert done.returncode == 2
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def _row(ratio: float, prefill: float, generation: float, end_to_end: float, compress: float,
         peak: int) -> dict:
    return {"method": "vidcom2", "ratio": ratio, "prefill_ms": prefill,
            "generation_ms": generation, "end_to_end_ms": end_to_end, "compress_ms": compress,
            "peak_memory_bytes": peak}


def test_latency_targets_pass_and_miss_at_their_limits():
    full = _row(1.0, 400.0, 1000.0, 2000.0, 0.0, 10 * 2**30)
    met = latency_targets([full, _row(0.25, 100.0, 300.0, 1000.0, 0.9, 10 * 2**30),
                           _row(0.15, 1.0, 1.0, 1.0, 0.0, 1)])
    assert [check["met"] for check in met] == [True] * 6  # only R = 0.25 is checked
    missed = latency_targets([full, _row(0.25, 101.0, 301.0, 1001.0, 20.0, 10 * 2**30 + 1)])
    assert [check["met"] for check in missed] == [False] * 6
    assert [check["target"] for check in missed] == [
        "prefill cut vs R=1", "LLM generation cut vs R=1", "end-to-end cut vs R=1",
        "compression time", "compression share of end to end", "peak memory vs R=1"]
    assert format_target(met[0]) == ("-75.0%", "<= -75%")
    assert format_target(met[3]) == ("0.900 ms", "< 1 ms")
    assert format_target(met[4]) == ("0.09%", "< 1%")
    assert format_target(met[5]) == ("10,240 MiB", "<= 10,240 MiB")
