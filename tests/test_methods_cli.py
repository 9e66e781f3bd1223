"""The compression methods through the command line: `vidcom2 methods`, --method-option, and
every method on every family in one bench per family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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
