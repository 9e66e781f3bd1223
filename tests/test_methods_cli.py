"""The compression methods through the command line: `vidcom2 methods`, --method-option, and
every method on every family in one bench per family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_adapters import FAMILIES
from typer.testing import CliRunner

from vidcom2_cli.cli import app
from vidcom2_cli.compression import METHODS, SIGNALS

pytestmark = pytest.mark.slow
CLIP = Path(__file__).resolve().parents[1] / "sample_videos" / "color_change.mp4"
runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_methods_lists_every_method_with_its_rule_signals_and_options():
    result = invoke("methods", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    listed = {row["name"]: row for row in payload["methods"]}
    assert set(listed) == set(METHODS)
    for name, row in listed.items():
        assert row["keeps"] and row["budget"]
        assert set(row["signals"]) <= set(SIGNALS)
        assert row["signals"] == list(METHODS[name].signals)
    human = invoke("methods")
    assert human.exit_code == 0
    for name in METHODS:
        assert name in human.stdout


def test_a_malformed_method_option_is_one_line_before_the_model_loads():
    result = invoke("ask", CLIP, "Q?", "--model", "/nonexistent/model", "--method-option",
                    "tau")
    assert result.exit_code == 2
    assert "--method-option" in one_line(result) and "NAME=NUMBER" in result.stderr


def test_an_option_the_method_lacks_is_one_line_naming_the_known_ones(tiny_checkpoints):
    result = invoke("ask", CLIP, "Q?", "--model", tiny_checkpoints("qwen2_vl"), "--frames", "4",
                    "--max-new-tokens", "2", "--device", "cpu", "--method-option", "nosuch=1")
    assert result.exit_code == 2
    line = one_line(result)
    assert "--method-option" in line and "nosuch" in line


@pytest.mark.parametrize(("command", "unknown"), [
    (["ask", CLIP, "Q?", "--method", "fastvid"], "method 'fastvid' has no option 'nosuch'"),
    (["bench", CLIP, "--methods", "vidcom2,fastvid"], "none of the methods has an option 'nosuch'"),
])
@pytest.mark.parametrize("option", ["nosuch=1", "tau=7"])
def test_an_option_no_family_accepts_is_refused_before_the_model_loads(command, unknown, option,
                                                                        tiny_checkpoints,
                                                                        monkeypatch):
    """The option's line comes before the model loads: nothing is loaded."""
    from vidcom2_cli.engine import Engine

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Engine, "load", no_load)
    result = invoke(*command, "--model", tiny_checkpoints("qwen2_vl"), "--method-option", option)
    assert result.exit_code == 2
    line = one_line(result)
    said = unknown if option == "nosuch=1" else "fastvid': tau must be in [-1, 1], got 7"
    assert line.startswith("error: --method-option:") and said in line


def test_an_option_only_another_family_has_is_refused_once_the_model_is_known(
        tiny_checkpoints):
    """FastVID's ``ignore`` exists on the Qwen profile only."""
    result = invoke("ask", CLIP, "Q?", "--model", tiny_checkpoints("llava_onevision"),
                    "--frames", "4", "--max-new-tokens", "2", "--device", "cpu",
                    "--method", "fastvid", "--method-option", "ignore=0.9")
    assert result.exit_code == 2
    line = one_line(result)
    assert "--method-option" in line and "option 'ignore' exists only for the Qwen" in line


# VidCom2 and the field's methods with their +fca variants: every registered one but the
# baselines and the flat ablation
FIELD = ",".join(name for name in METHODS
                 if not name.startswith(("random", "uniform")) and name != "vidcom2+flat")


@pytest.mark.parametrize("family", FAMILIES)
def test_bench_runs_every_method_on_every_family(tiny_checkpoints, family):
    """One encoding (with every signal) serves every method; each sends fewer tokens than the
    full row, and the merging methods say how many tokens they folded."""
    result = invoke("bench", CLIP, "--model", tiny_checkpoints(family), "--frames", "4",
                    "--ratios", "1.0,0.3", "--methods", FIELD, "--repeats", "1", "--warmup", "0",
                    "--max-new-tokens", "2", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {row["method"] for row in rows} == set(FIELD.split(","))
    full = rows[0]
    for row in rows:
        assert row["vision_ms"] == full["vision_ms"]  # one encoder run for every method
        if row["ratio"] == 0.3:
            assert row["visual_kept"] < full["visual_full"], row["method"]
        else:
            assert row["visual_kept"] == full["visual_full"] and row["merged_tokens"] == 0
    merged = {row["method"]: row["merged_tokens"] for row in rows if row["ratio"] == 0.3}
    assert merged["vidcom2"] == merged["dycoke"] == 0  # they only drop
    assert merged["visionzip"] > 0 and merged["flashvid"] > 0


def test_method_options_reach_the_method(tiny_checkpoints):
    """--method-option changes what HoliTom keeps (a lower static threshold merges more)."""
    def kept(*extra: str) -> int:
        result = invoke("ask", CLIP, "What happens?", "--model", tiny_checkpoints("qwen2_vl"),
                        "--frames", "8", "--max-new-tokens", "2", "--device", "cpu",
                        "--method", "holitom", "--ratio", "0.3", "--json", *extra)
        assert result.exit_code == 0, result.stderr
        payload = json.loads(result.stdout)
        return payload["tokens"]["per_frame_kept"], payload["merged_tokens"]

    assert kept() != kept("--method-option", "tau=-1")


def test_an_option_out_of_its_range_is_one_line_naming_it(tiny_checkpoints):
    result = invoke("ask", CLIP, "Q?", "--model", tiny_checkpoints("llava_onevision"),
                    "--frames", "4", "--max-new-tokens", "2", "--device", "cpu",
                    "--method", "visionzip", "--method-option", "dominant_share=2")
    assert result.exit_code == 2
    line = one_line(result)
    assert "--method-option" in line and "dominant_share" in line and "[0, 1]" in line
