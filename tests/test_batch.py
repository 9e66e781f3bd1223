"""`vidcom2 batch`: input validation, scoring, resume, and whole runs on tiny checkpoints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vidcom2_cli.batch import (
    BatchOptions,
    ResultWriter,
    existing_ids,
    expected_choice,
    extract_choice,
    is_correct,
    multiple_choice_prompt,
    parse_lines,
    prepare_output,
    read_input,
    run_batch,
)
from vidcom2_cli.cli import app
from vidcom2_cli.engine import (
    CompressionOptions,
    Engine,
    GenerationOptions,
    InputError,
    SamplingOptions,
)
from vidcom2_cli.models import LoadOptions

SAMPLES = Path(__file__).resolve().parents[1] / "sample_videos"
COLOR, SCENE, COUNTING = (str(SAMPLES / name) for name in
                          ("color_change.mp4", "scene_cut.mp4", "counting.mp4"))
FAST = ["--frames", "4", "--max-new-tokens", "3", "--device", "cpu"]
OPTIONS = ["red", "blue", "green"]
runner = CliRunner()


def jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n"
                            for row in rows))
    return path


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def good_rows() -> list[dict]:
    return [
        {"id": "color", "video": COLOR, "question": "What colour is the ball at the end?",
         "options": OPTIONS, "answer": "B"},
        {"id": "scene", "video": SCENE, "question": "What happens in the video?"},
        {"id": "count", "video": "counting.mp4", "question": "How many squares are there?"},
        {"id": 4, "video": COUNTING, "question": "Is there a square?", "answer": "yes"},
    ]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the JSONL input and a copied clip that it names by a relative path."""
    folder = tmp_path_factory.mktemp("batch")
    shutil.copy(COUNTING, folder / "counting.mp4")
    jsonl(folder / "good.jsonl", good_rows())
    return folder


@pytest.fixture(scope="module")
def qwen(tiny_checkpoints) -> list[str]:
    return ["-m", str(tiny_checkpoints("qwen2_vl")), *FAST]


@pytest.fixture(scope="module")
def baseline(workdir: Path, qwen: list[str]) -> dict[object, dict]:
    """The good items answered one per generate call, by id."""
    out = workdir / "baseline.jsonl"
    result = runner.invoke(app, ["batch", str(workdir / "good.jsonl"), "--out", str(out), *qwen])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    return {row["id"]: row for row in records(out.read_text())}


# --- no model -------------------------------------------------------------------------------

def test_multiple_choice_prompt_follows_lmms_eval():
    assert multiple_choice_prompt("What colour?", OPTIONS) == (
        "What colour?\nA. red\nB. blue\nC. green\n"
        "Answer with the option's letter from the given choices directly.")


@pytest.mark.parametrize(("text", "letter"), [
    ("B", "B"), ("(C)", "C"), ("B. blue", "B"), ("The answer is C.", "C"),
    ("A red ball, so B", "B"),  # "A" the article is not a choice
    ("A", "A"), ("A.", "A"), ("D", None),  # D is out of range
    ("blue", "B"), ("It is green.", "C"), ("red or blue", None), ("BLUE", "B"), ("", None),
])
def test_extract_choice(text, letter):
    assert extract_choice(text, OPTIONS) == letter


def test_scoring():
    assert expected_choice("b", OPTIONS) == "B"
    assert expected_choice("Green", OPTIONS) == "C"
    with pytest.raises(ValueError, match="neither an option letter"):
        expected_choice("purple", OPTIONS)
    assert is_correct("B. blue", "blue", OPTIONS)
    assert is_correct("The ball is blue.", "B", OPTIONS)
    assert not is_correct("C", "B", OPTIONS)
    assert is_correct("  Five squares! ", "five squares", None)
    assert not is_correct("five", "five squares", None)


def test_parse_lines_turns_bad_lines_into_errors(tmp_path):
    rows = [
        {"id": "a", "video": "clip.mp4", "question": "Q?"},
        "{not json",
        {"video": "clip.mp4", "question": "Q?"},
        {"id": "b", "video": "clip.mp4", "question": " "},
        {"id": "c", "video": "clip.mp4", "question": "Q?", "options": ["only one"]},
        {"id": "d", "video": "clip.mp4", "question": "Q?", "options": OPTIONS, "answer": "E"},
        {"id": "a", "video": "/abs/clip.mp4", "question": "again"},
        "",
        {"id": 7, "video": "/abs/clip.mp4", "question": "Q?", "options": OPTIONS,
         "answer": "red"},
    ]
    items = parse_lines(jsonl(tmp_path / "in.jsonl", rows).read_bytes(), tmp_path)
    assert [item.id for item in items] == ["a", "line-2", "line-3", "b", "c", "d", "a", 7]
    assert items[0].error is None and items[0].video == str(tmp_path / "clip.mp4")
    assert "not valid JSON" in items[1].error
    assert items[2].error.startswith("id:")
    assert items[3].error == "question: the question is empty"
    assert items[4].error.startswith("options:")
    assert "neither an option letter" in items[5].error
    assert items[6].error == "duplicate id (first on line 1)"
    assert items[7].error is None and items[7].prompt.endswith("directly.")
    assert all("\n" not in item.error for item in items if item.error)


def test_resume_scan_cuts_a_partial_line(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a"}\n{"id": 2, "error": "x"}\n{"id": "c", "ans')
    assert existing_ids(out) == {"a", "2"}
    assert out.read_text() == '{"id": "a"}\n{"id": 2, "error": "x"}\n'
    assert existing_ids(tmp_path / "absent.jsonl") == set()


def test_output_checks(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a"}\n')
    with pytest.raises(InputError, match="pass --resume"):
        prepare_output(str(out), False, "-")
    assert prepare_output(str(out), True, "-") == {"a"}
    with pytest.raises(InputError, match="is the input file"):
        prepare_output(str(out), True, str(out))
    with pytest.raises(InputError, match="needs --out to be a file"):
        prepare_output("-", True, "-")
    with pytest.raises(InputError, match="does not exist"):
        prepare_output(str(tmp_path / "nowhere" / "out.jsonl"), False, "-")
    with pytest.raises(InputError, match="no such file"):
        read_input(str(tmp_path / "missing.jsonl"))


def test_cli_usage_errors_exit_2_before_loading(tmp_path, workdir):
    existing = jsonl(tmp_path / "out.jsonl", [{"id": "x"}])
    good = str(workdir / "good.jsonl")
    model = ["-m", str(tmp_path / "no-model"), *FAST]  # never loaded: each check comes first
    for args, message in [
        ([good, "--out", str(existing)], "pass --resume"),
        ([str(tmp_path / "missing.jsonl"), "--out", "-"], "no such file"),
        ([good, "--out", "-", "--batch-size", "0"], "--batch-size"),
        ([good, "--out", "-", "--ratio", "0"], "--ratio"),
        ([good, "--out", "-", "--frames", "0"], "--frames"),
    ]:
        result = runner.invoke(app, ["batch", *model, *args])  # later options win
        assert result.exit_code == 2, result.output
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert result.stdout == ""
    assert existing.read_text() == '{"id": "x"}\n'


# --- whole runs -----------------------------------------------------------------------------

def test_every_id_once_and_bad_items_recorded(workdir, qwen, baseline):
    rows = [*good_rows(),
            {"id": "missing", "video": "nope.mp4", "question": "Q?"},
            {"id": "empty", "video": COLOR, "question": ""},
            "{broken",
            {"id": "scene", "video": SCENE, "question": "duplicate"}]
    source = jsonl(workdir / "mixed.jsonl", rows)
    out = workdir / "mixed-out.jsonl"
    result = runner.invoke(app, ["batch", str(source), "--out", str(out), *qwen])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    written = records(out.read_text())
    assert [row["id"] for row in written] == [
        "color", "scene", "count", 4, "missing", "empty", "line-7", "scene"]
    errors = {row["id"]: row["error"] for row in written if "error" in row}
    assert errors == {"missing": f"{workdir / 'nope.mp4'}: no such file",
                      "empty": "question: the question is empty",
                      "line-7": errors["line-7"], "scene": "duplicate id (first on line 2)"}
    assert errors["line-7"].startswith("line 7: not valid JSON")
    for row in written[:4]:
        assert row["answer"] == baseline[row["id"]]["answer"]
        assert row["tokens"]["generated"] >= 1 and row["frames"]["count"] == 4
    assert written[2]["video"] == str(workdir / "counting.mp4")
    assert "8 items: 8 processed (4 answered, 4 errors), 0 skipped" in result.stderr


def test_batch_size_two_gives_the_same_answers(workdir, qwen, baseline):
    out = workdir / "batched.jsonl"
    result = runner.invoke(app, ["batch", str(workdir / "good.jsonl"), "--out", str(out),
                                 "--batch-size", "2", *qwen])
    assert result.exit_code == 0, result.output
    batched = {row["id"]: row["answer"] for row in records(out.read_text())}
    assert batched == {key: row["answer"] for key, row in baseline.items()}


def test_resume_neither_repeats_nor_loses_items(workdir, qwen, baseline):
    out = workdir / "resumed.jsonl"
    done = [json.dumps(baseline[key]) for key in ("color", "scene")]
    out.write_text("\n".join(done) + '\n{"id": "count", "vid')
    result = runner.invoke(app, ["batch", str(workdir / "good.jsonl"), "--out", str(out),
                                 "--resume", *qwen])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.startswith("\n".join(done) + "\n") and '"vid\n' not in text
    written = records(text)
    assert [row["id"] for row in written] == ["color", "scene", "count", 4]
    assert [row["answer"] for row in written] == [baseline[row["id"]]["answer"]
                                                  for row in written]
    assert "2 processed (2 answered, 0 errors), 2 skipped" in result.stderr


def test_expected_answers_are_scored(workdir, qwen, baseline):
    """A free-text answer equal to the model's greedy one scores, the multiple-choice may not."""
    rows = [{**good_rows()[0]},
            {"id": "scene", "video": SCENE, "question": "What happens in the video?",
             "answer": f"  {baseline['scene']['answer'].upper()} "},
            {"id": "count", "video": "counting.mp4", "question": "How many squares are there?"}]
    source = jsonl(workdir / "scored.jsonl", rows)
    out = workdir / "scored-out.jsonl"
    result = runner.invoke(app, ["batch", str(source), "--out", str(out), *qwen])
    assert result.exit_code == 0, result.output
    color, scene, count = records(out.read_text())
    assert scene["correct"] is True and scene["expected"] == rows[1]["answer"]
    assert color["correct"] is is_correct(color["answer"], "B", OPTIONS)
    assert color["question"] == multiple_choice_prompt(rows[0]["question"], OPTIONS)
    assert "correct" not in count and "expected" not in count
    scored = [color["correct"], scene["correct"]]
    assert (f"accuracy {sum(scored)}/2 = {50.0 * sum(scored):.1f}%"
            in result.stderr)


def test_stdin_to_stdout_is_only_json_lines(workdir, qwen, monkeypatch):
    monkeypatch.chdir(workdir)  # stdin: relative videos resolve against the current folder
    data = (workdir / "good.jsonl").read_bytes()
    result = runner.invoke(app, ["batch", "-", "--out", "-", *qwen], input=data)
    assert result.exit_code == 0, result.output
    written = records(result.stdout)
    assert [row["id"] for row in written] == ["color", "scene", "count", 4]
    assert written[2]["video"] == "counting.mp4" and "error" not in written[2]
    assert "4 items" in result.stderr


def test_real_process_keeps_stdout_clean(workdir, tiny_checkpoints):
    script = Path(sys.executable).with_name("vidcom2")
    rows = [*good_rows()[:2], {"id": "gone", "video": "gone.mp4", "question": "Q?"}]
    payload = "".join(json.dumps(row) + "\n" for row in rows)
    done = subprocess.run(
        [str(script), "batch", "-", "--out", "-", "-m", str(tiny_checkpoints("llava_onevision")),
         *FAST, "--batch-size", "2"],
        input=payload, capture_output=True, text=True, cwd=workdir, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    written = records(done.stdout)
    assert [row["id"] for row in written] == ["color", "scene", "gone"]
    assert written[2]["error"] == "gone.mp4: no such file"
    assert "3 items: 3 processed (2 answered, 1 error)" in done.stderr


def test_run_batch_retries_a_failed_batch_item_by_item(tmp_path, workdir, tiny_checkpoints,
                                                       monkeypatch):
    engine = Engine.load(str(tiny_checkpoints("qwen2_vl")), LoadOptions(device="cpu"))
    real_answer = engine.answer

    def flaky(encoded, compression, generation):
        if len(encoded) > 1 or encoded[0].request.id == "scene":
            raise RuntimeError("simulated failure\nsecond line")
        return real_answer(encoded, compression, generation)

    monkeypatch.setattr(engine, "answer", flaky)
    items = read_input(str(workdir / "good.jsonl"))
    options = BatchOptions(SamplingOptions(frames=4), CompressionOptions(ratio=0.5),
                           GenerationOptions(max_new_tokens=2), batch_size=3)
    out = tmp_path / "out.jsonl"
    with ResultWriter.open(str(out)) as writer:
        summary = run_batch(engine, items, options, writer, done={"4"})
    written = records(out.read_text())
    assert [row["id"] for row in written] == ["color", "scene", "count"]
    assert written[1]["error"] == "RuntimeError: simulated failure"
    assert "correct" in written[0] and "correct" not in written[2]
    values = summary.as_dict()
    assert {key: values[key] for key in ("items", "processed", "answered", "skipped", "errors",
                                         "scored")} == {
        "items": 4, "processed": 3, "answered": 2, "skipped": 1, "errors": 1, "scored": 1}
    assert values["accuracy"] == float(written[0]["correct"])
    assert values["mean_kept_ratio"] == pytest.approx(
        (written[0]["kept_ratio"] + written[2]["kept_ratio"]) / 2)
    assert values["mean_prefill_ms"] > 0
