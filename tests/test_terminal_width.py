"""What a person reads fits an 80-column terminal: no line wider, no identifier cut short
(rich marks a cut cell with "…"), and the bench baseline shown once."""

from __future__ import annotations

import pytest
from rich.console import Console
from typer.testing import CliRunner

from vidcom2_cli.bench import BenchRow
from vidcom2_cli.catalog import METHOD_NAMES, SUPPORTED_MODEL_TYPES, preset_names
from vidcom2_cli.cli import app, console
from vidcom2_cli.report import render_bench

runner = CliRunner()


@pytest.fixture
def terminal(monkeypatch):
    """stdout as an 80-column terminal; returns what was printed."""
    screen = Console(width=80, record=True, force_terminal=True, color_system=None)
    monkeypatch.setattr(console, "stdout", screen)
    return screen


def printed(screen: Console, *args: str) -> list[str]:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.stderr
    lines = screen.export_text().splitlines()
    assert lines, "nothing printed"
    too_wide = [line for line in lines if len(line.rstrip()) > 80]
    assert not too_wide, too_wide
    assert not any("…" in line for line in lines), "\n".join(lines)
    return lines


def test_models_shows_every_checkpoint_whole(terminal):
    text = "\n".join(printed(terminal, "models"))
    for kind, (label, checkpoints, _) in SUPPORTED_MODEL_TYPES.items():
        assert kind in text and label in text
        for checkpoint in checkpoints:
            assert checkpoint in text
    for name in preset_names():
        assert f"random:{name}" in text


@pytest.mark.parametrize("family", list(SUPPORTED_MODEL_TYPES))
def test_models_family_shows_how_it_runs(terminal, family):
    text = " ".join(line.strip() for line in printed(terminal, "models", family))
    assert "how it runs" in text and SUPPORTED_MODEL_TYPES[family][1][0] in text


def test_methods_lists_every_method(terminal):
    lines = printed(terminal, "methods")
    names = {line.split()[0] for line in lines if line.strip()}
    assert set(METHOD_NAMES) <= names


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_methods_name_shows_the_whole_method(terminal, name):
    text = " ".join(line.strip() for line in printed(terminal, "methods", name))
    for label in ("keeps", "budget", "signals", "options"):
        assert label in text


def bench_rows() -> list[BenchRow]:
    """Rows as large as a long GPU run makes them (five-digit times, 12,544 tokens)."""
    rows = []
    for method in ("vidcom2", "fastvid+fca", "visionzip+fca"):
        for ratio in (1.0, 0.25, 0.15):
            kept = 12544 if ratio == 1.0 else round(12544 * ratio)
            rows.append(BenchRow(method, ratio, kept, 12544, 13000, 93.5, 342.8, 30436.1,
                                 1535.8, 12345.6, 23456.7, 142.73, 35802.3, 123456.7, 1 / ratio,
                                 12345 * 2**20, "cuda", "x", ratio == 1.0))
    return rows


def render(width: int) -> list[str]:
    screen = Console(width=width, record=True, color_system=None)
    screen.print(render_bench(bench_rows(), "title", width))
    return screen.export_text().splitlines()


def test_bench_fits_80_columns_and_shows_the_baseline_once():
    lines = render(80)
    assert all(len(line.rstrip()) <= 80 for line in lines), lines
    assert not any("…" in line for line in lines)
    # two tables (LLM figures, then the other stages), each with the baseline once
    assert sum("(stock model)" in line for line in lines) == 2
    for method in ("vidcom2", "fastvid+fca", "visionzip+fca"):
        assert sum(line.split()[0] == method for line in lines if line.strip()) == 4
    for column in ("speed-up", "prefill", "peak mem", "compress", "ms/tok", "same"):
        assert any(column in line for line in lines)


def test_bench_on_a_wide_terminal_is_one_table():
    lines = render(160)
    header = next(line for line in lines if "speed-up" in line)
    assert "peak mem" in header and "compress" in header
    assert sum("(stock model)" in line for line in lines) == 1


def test_eval_summary_fits_80_columns_with_long_subtask_names():
    from vidcom2_cli.evaluation.summary import render as render_eval

    subsets = ["all", "counterfactual_inference", "fine_grained_pose", "unexpected_action"]
    rows = [{"subset": subset, "method": method, "ratio": ratio, "questions": 200,
             "errors": 15, "score": 63.5, "of_full": 99.6, "visual_tokens": 12544.0,
             "prefill_ms": 12345.6, "seconds_per_question": 12.34,
             "visual_kv_attended": 12544.0 if stages is None else 1234.5,
             "llm_stages": stages or {}}
            for subset in subsets for method, ratio, stages in (
                ("vidcom2", 1.0, None), ("visionzip+fca", 0.15, None),
                ("holitom+fca", 0.15, {"merge@18": 6272.0}),
                ("dycoke+fca", 0.15, {"kv-prune@3": 1254.4}))]
    screen = Console(width=80, record=True, color_system=None)
    screen.print(render_eval({"task": "mvbench", "score": "63.5", "rows": rows}))
    lines = screen.export_text().splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines), lines
    assert not any("…" in line for line in lines)
    for subset in subsets:
        assert subset in [line.strip() for line in lines]  # each name whole, on its own line
    assert sum("visionzip+fca" in line for line in lines) == len(subsets)
    header = next(line for line in lines if "score" in line and "prefill" in line)
    assert " KV " in header
    holitom = [line for line in lines if line.startswith(" holitom+fca")]
    assert len(holitom) == len(subsets) and all("1,234" in line for line in holitom)
    # the stages' figures, once for all questions
    assert [line.strip() for line in lines if "merge@18" in line] == [
        "holitom+fca R=0.15: merge@18 6,272"]
    assert [line.strip() for line in lines if "kv-prune@3 " in line] == [
        "dycoke+fca R=0.15: kv-prune@3 1,254"]


@pytest.mark.parametrize("command", ["ask", "chat", "watch", "bench", "batch", "eval", "serve",
                                     "cache", "models", "methods", "info", ""])
def test_help_fits_80_columns_without_a_cut_word(command):
    """Typer lays --help out as a table: a word wider than its column (a checkpoint id, an
    environment variable, a list of methods) would be cut with "…"."""
    import os
    import subprocess
    import sys

    code = "import sys; from vidcom2_cli.cli import main; sys.argv[0] = 'vidcom2'; main()"
    argv = [sys.executable, "-c", code, *([command] if command else []), "--help"]
    env = {**os.environ, "COLUMNS": "80", "TERM": "xterm"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) > 5
    assert max(len(line) for line in lines) <= 80, done.stdout
    assert "…" not in done.stdout, done.stdout
