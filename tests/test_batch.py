"""`vidcom2 batch`: input validation, scoring, resume, and whole runs on tiny checkpoints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from jsonl_files import jsonl, records
from typer.testing import CliRunner

from vidcom2_cli.batch.input import parse_lines, read_input
from vidcom2_cli.batch.local import BatchOptions, run_batch
from vidcom2_cli.batch.output import ResultWriter, existing_ids, pending_items, prepare_output
from vidcom2_cli.cli import app, with_ray_address
from vidcom2_cli.engine import Engine
from vidcom2_cli.errors import InputError
from vidcom2_cli.models import LoadOptions
from vidcom2_cli.multiple_choice import (
    expected_choice,
    extract_choice,
    is_correct,
    multiple_choice_prompt,
)
from vidcom2_cli.options import CompressionOptions, GenerationOptions, SamplingOptions
from vidcom2_cli.video import load_video

SAMPLES = Path(__file__).resolve().parents[1] / "sample_videos"
COLOR, SCENE, COUNTING = (str(SAMPLES / name) for name in
                          ("color_change.mp4", "scene_cut.mp4", "counting.mp4"))
FAST = ["--frames", "4", "--max-new-tokens", "3", "--device", "cpu"]
OPTIONS = ["red", "blue", "green"]
runner = CliRunner()


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
    assert existing_ids(out) == Counter({"a": 1, "2": 1})
    assert out.read_text() == '{"id": "a"}\n{"id": 2, "error": "x"}\n'
    assert existing_ids(tmp_path / "absent.jsonl") == Counter()


def test_resume_gives_a_repeated_id_its_own_record(tmp_path):
    """A repeated id's error record comes after the first item's record: a run killed
    between the two must still write it on resume, and a finished run must write nothing."""
    rows = [{"id": "a", "video": "x.mp4", "question": "Q?"},
            {"id": "b", "video": "x.mp4", "question": "Q?"},
            {"id": "a", "video": "x.mp4", "question": "again"}]
    items = parse_lines(jsonl(tmp_path / "in.jsonl", rows).read_bytes(), tmp_path)
    lines = [item.line for item in pending_items(items, Counter({"a": 1, "b": 1}))]
    assert lines == [3]
    assert [item.line for item in pending_items(items, Counter({"a": 1}))] == [2, 3]
    assert pending_items(items, Counter({"a": 2, "b": 1})) == []
    assert pending_items(items, Counter()) == items


def test_output_checks(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a"}\n')
    with pytest.raises(InputError, match="pass --resume"):
        prepare_output(str(out), False, "-")
    assert prepare_output(str(out), True, "-") == Counter({"a": 1})
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
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    model = ["-m", str(tmp_path / "no-model"), *FAST]  # never loaded: each check comes first
    for args, message in [
        ([good, "--out", str(existing)], "pass --resume"),
        ([str(tmp_path / "missing.jsonl"), "--out", "-"], "no such file"),
        ([good, "--out", "-", "--batch-size", "0"], "--batch-size"),
        ([good, "--out", "-", "--ratio", "0"], "--ratio"),
        ([good, "--out", "-", "--frames", "0"], "--frames"),
        ([str(empty), "--out", "-"], "no questions in it"),
        ([str(empty), "--out", "-", "--ray"], "no questions in it"),
    ]:
        result = runner.invoke(app, with_ray_address(["batch", *model, *args]))  # later win
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
                           GenerationOptions(max_new_tokens=2), batch_size=3, reuse=False)
    out = tmp_path / "out.jsonl"
    with ResultWriter.open(str(out)) as writer:
        summary = run_batch(engine, items, options, writer, done=Counter({"4": 1}))
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


# --- decoding ahead on worker threads (--prefetch) ------------------------------------------

def _comparable(row: dict) -> dict:
    """A record without what varies between runs (times, memory)."""
    return {key: value for key, value in row.items() if key not in ("timing_ms", "memory")}


@pytest.fixture(scope="module")
def qwen_engine(tiny_checkpoints) -> Engine:
    return Engine.load(str(tiny_checkpoints("qwen2_vl")), LoadOptions(device="cpu"))


@pytest.fixture(scope="module")
def prefetch_rows(workdir: Path) -> list[dict | str]:
    """Good items around bad ones: missing and undecodable videos mid-way, a malformed line."""
    (workdir / "broken.mp4").write_bytes(b"this is not a video\n" * 50)
    good = good_rows()
    return [good[0], good[1],
            {"id": "missing", "video": "nope.mp4", "question": "Q?"},
            {"id": "broken", "video": "broken.mp4", "question": "What happens?"},
            good[2], "{broken", good[3],
            {"id": "scene-2", "video": SCENE, "question": "Is there a cut?"},
            {"id": "color-2", "video": COLOR, "question": "What moves?"}]


def _run(engine: Engine, items: list, out: Path, prefetch: int, batch_size: int = 2,
         done: Counter[str] | None = None, reuse: bool = False) -> list[dict]:
    options = BatchOptions(SamplingOptions(frames=4), CompressionOptions(ratio=0.5),
                           GenerationOptions(max_new_tokens=3), batch_size=batch_size,
                           prefetch=prefetch, reuse=reuse)
    with ResultWriter.open(str(out)) as writer:
        run_batch(engine, items, options, writer, done)
    return records(out.read_text())


def test_prefetch_gives_the_same_records_in_the_same_order(tmp_path, workdir, qwen_engine,
                                                           prefetch_rows):
    items = parse_lines(jsonl(workdir / "prefetch.jsonl", prefetch_rows).read_bytes(), workdir)
    runs = {prefetch: _run(qwen_engine, items, tmp_path / f"out-{prefetch}.jsonl", prefetch)
            for prefetch in (0, 1, 4, 100)}
    expected_ids = ["color", "scene", "missing", "broken", "count", "line-6", 4, "scene-2",
                    "color-2"]
    for prefetch, written in runs.items():
        assert [row["id"] for row in written] == expected_ids, prefetch
        assert [_comparable(row) for row in written] == [_comparable(row) for row in runs[0]]
    errors = {row["id"]: row["error"] for row in runs[4] if "error" in row}
    assert errors["missing"] == f"{workdir / 'nope.mp4'}: no such file"
    assert errors["broken"].startswith(f"{workdir / 'broken.mp4'}: not a readable video")
    assert errors["line-6"].startswith("line 6: not valid JSON")
    assert all(set(row["timing_ms"]) >= {"video_decode", "preprocess", "vision", "compress",
                                         "prefill", "decode", "total"}
               for row in runs[4] if "error" not in row)


def test_prefetch_with_resume_skips_done_ids(tmp_path, workdir, qwen_engine, prefetch_rows):
    items = parse_lines(jsonl(workdir / "prefetch.jsonl", prefetch_rows).read_bytes(), workdir)
    written = _run(qwen_engine, items, tmp_path / "out.jsonl", prefetch=3,
                   done=Counter({"scene": 1, "broken": 1, "4": 1}))
    assert [row["id"] for row in written] == ["color", "missing", "count", "line-6", "scene-2",
                                              "color-2"]


def test_model_runs_on_the_main_thread_and_decoding_ahead_is_bounded(tmp_path, workdir,
                                                                     qwen_engine, monkeypatch,
                                                                     prefetch_rows):
    """Decoding on worker threads, never more than `prefetch` items past the one encoding;
    the vision encoder and generate only on the calling thread."""
    items = parse_lines(jsonl(workdir / "prefetch.jsonl", prefetch_rows).read_bytes(), workdir)
    order = {item.key: index for index, item in enumerate(items)}
    main = threading.current_thread()
    events: list[tuple[str, str, bool]] = []  # (what, id, on the main thread)
    lock = threading.Lock()
    real_prepare, real_encode = qwen_engine.prepare, qwen_engine.encode_prepared
    real_generate = qwen_engine._generate  # the phase: which thread runs generate

    def prepare(request, sampling):
        with lock:
            events.append(("prepare", request.id, threading.current_thread() is main))
        return real_prepare(request, sampling)

    def encode_prepared(prepared):
        with lock:
            events.append(("encode", prepared.request.id, threading.current_thread() is main))
        return real_encode(prepared)

    def generate(compressed, options, **kwargs):
        with lock:
            events.append(("generate", "", threading.current_thread() is main))
        return real_generate(compressed, options, **kwargs)

    monkeypatch.setattr(qwen_engine, "prepare", prepare)
    monkeypatch.setattr(qwen_engine, "encode_prepared", encode_prepared)
    monkeypatch.setattr(qwen_engine, "_generate", generate)
    for prefetch in (0, 2):
        events.clear()
        _run(qwen_engine, items, tmp_path / f"out-{prefetch}.jsonl", prefetch)
        prepared = [key for what, key, _ in events if what == "prepare"]
        assert sorted(prepared, key=order.get) == ["color", "scene", "missing", "broken",
                                                   "count", "4", "scene-2", "color-2"]
        assert all(on_main for what, _, on_main in events if what != "prepare")
        assert all(on_main == (prefetch == 0) for what, _, on_main in events
                   if what == "prepare")
        for index, (what, key, _) in enumerate(events):
            if what == "encode":  # items started by then lie at most `prefetch` items ahead
                started = [order[k] for w, k, _ in events[:index] if w == "prepare"]
                assert max(started) <= order[key] + prefetch


def test_interrupt_leaves_complete_lines_and_stops_decoding(tmp_path, workdir, qwen_engine,
                                                            monkeypatch):
    rows = [{"id": f"item-{index}", "video": (COLOR, SCENE, COUNTING)[index % 3],
             "question": "What happens?"} for index in range(12)]
    items = parse_lines(jsonl(tmp_path / "many.jsonl", rows).read_bytes(), tmp_path)
    real_answer, real_prepare = qwen_engine.answer, qwen_engine.prepare
    calls = {"answer": 0, "prepare": 0}

    def answer(encoded, compression, generation):
        calls["answer"] += 1
        if calls["answer"] == 2:
            raise KeyboardInterrupt
        return real_answer(encoded, compression, generation)

    def prepare(request, sampling):
        calls["prepare"] += 1
        return real_prepare(request, sampling)

    monkeypatch.setattr(qwen_engine, "answer", answer)
    monkeypatch.setattr(qwen_engine, "prepare", prepare)
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        _run(qwen_engine, items, out, prefetch=3, batch_size=2)
    for thread in threading.enumerate():
        if thread.name.startswith("vidcom2-prefetch"):
            thread.join(timeout=60)
    text = out.read_text()
    assert text.endswith("\n")
    assert [row["id"] for row in records(text)] == ["item-0", "item-1"]
    assert calls["prepare"] <= 4 + 3  # the second batch and the window after it, no more


def test_decoding_from_several_threads_gives_the_same_frames():
    """Each load_video opens its own decord reader, so threads may decode at once."""
    jobs = [(video, frames) for video in (COLOR, SCENE, COUNTING) for frames in (3, 8)] * 2
    alone = [load_video(video, num_frames=frames).frames for video, frames in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda job: load_video(job[0], num_frames=job[1]).frames, jobs))
    assert all(np.array_equal(a, b) for a, b in zip(alone, together, strict=True))


def test_prefetch_option(workdir, qwen, tmp_path):
    model = ["-m", str(tmp_path / "no-model"), *FAST]  # never loaded: the check comes first
    result = runner.invoke(app, ["batch", str(workdir / "good.jsonl"), "--out", "-", *model,
                                 "--prefetch", "-1"])
    assert result.exit_code == 2, result.output
    assert "--prefetch" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""
    assert BatchOptions(SamplingOptions(), CompressionOptions(), GenerationOptions(),
                        batch_size=3).prefetch_items == 6
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["batch", str(workdir / "good.jsonl"), "--out", str(out), *qwen,
                                 "--prefetch", "0"])
    assert result.exit_code == 0, result.output
    assert [row["id"] for row in records(out.read_text())] == ["color", "scene", "count", 4]


@pytest.mark.parametrize("prefetch", [0, 3])
def test_unexpected_failure_preparing_one_item_is_its_error(tmp_path, workdir, qwen_engine,
                                                             prefetch_rows, monkeypatch,
                                                             prefetch):
    items = parse_lines(jsonl(workdir / "prefetch.jsonl", prefetch_rows).read_bytes(), workdir)
    real_prepare = qwen_engine.prepare

    def prepare(request, sampling):
        if request.id == "count":
            raise RuntimeError("decoder crashed\nsecond line")
        return real_prepare(request, sampling)

    monkeypatch.setattr(qwen_engine, "prepare", prepare)
    written = _run(qwen_engine, items, tmp_path / "out.jsonl", prefetch)
    assert [row["id"] for row in written] == ["color", "scene", "missing", "broken", "count",
                                              "line-6", 4, "scene-2", "color-2"]
    by_id = {row["id"]: row for row in written}
    assert by_id["count"]["error"] == "RuntimeError: decoder crashed"
    assert "answer" in by_id["scene-2"] and "answer" in by_id[4]


def test_a_prompt_too_long_for_the_context_is_only_its_items_error(tmp_path, workdir,
                                                                   qwen_engine):
    good = good_rows()
    rows = [good[0], {"id": "long", "video": SCENE, "question": "what happens next " * 1500},
            good[1]]
    items = parse_lines(jsonl(workdir / "long.jsonl", rows).read_bytes(), workdir)
    written = _run(qwen_engine, items, tmp_path / "out.jsonl", prefetch=0, batch_size=3)
    assert [row["id"] for row in written] == ["color", "long", "scene"]
    assert "answer" in written[0] and "answer" in written[2]
    error = written[1]["error"]
    assert error.startswith(str(SCENE)) and "context is 4096 tokens" in error


def test_the_eta_follows_the_average_pace_not_the_last_burst():
    """A video's questions are written at once: rich's estimate from the last updates read
    0:00:01 with most items left; the run's average pace does not."""
    from types import SimpleNamespace

    from vidcom2_cli.batch.progress import AverageTimeRemainingColumn

    column = AverageTimeRemainingColumn()
    burst = SimpleNamespace(completed=4, total=100, elapsed=40.0)  # 4 items in 40 s
    assert column.render(burst).plain == "0:16:00"  # 96 more at 10 s each
    assert column.render(SimpleNamespace(completed=0, total=100, elapsed=5.0)).plain == "-:--:--"
    assert column.render(SimpleNamespace(completed=3, total=None, elapsed=5.0)).plain == "-:--:--"


def test_counts_take_the_right_number():
    from vidcom2_cli.batch.progress import BatchSummary
    from vidcom2_cli.wording import counted

    assert [counted(n, "entry", "entries") for n in (0, 1, 2)] == [
        "0 entries", "1 entry", "2 entries"]
    one = BatchSummary(total=1)
    one.add({"id": "a", "error": "video not found: x"})
    assert one.render().startswith("1 item: 1 processed (0 answered, 1 error)")
