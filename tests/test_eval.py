"""`vidcom2 eval` (issue 17): the four tasks read from their publishers' layouts, prompts and
answer extraction as lmms-eval's task files (commit 75571cfe, written here as facts), sweeps
that encode each video once, resume, and the summary."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jsonl_files import records
from odd_videos import encode
from typer.testing import CliRunner

from vidcom2_cli.batch.local import BatchOptions, run_batch
from vidcom2_cli.batch.output import ResultWriter, existing_ids
from vidcom2_cli.cli import app
from vidcom2_cli.engine import Engine
from vidcom2_cli.errors import InputError
from vidcom2_cli.evaluation import (
    TASKS,
    DatasetError,
    mlvu,
    mvbench,
    parse_task,
    read_questions,
    resolve_variant,
    videomme,
)
from vidcom2_cli.evaluation import longvideobench as lvb
from vidcom2_cli.evaluation.summary import summarize
from vidcom2_cli.evaluation.sweep import (
    ScoringSink,
    Setting,
    settings,
    sweep_items,
    with_method_options,
)
from vidcom2_cli.models import LoadOptions
from vidcom2_cli.multiple_choice import lvb_letter, mcq_letter, mvbench_normal_form
from vidcom2_cli.options import CompressionOptions, GenerationOptions, SamplingOptions

runner = CliRunner()
FAST = ["--frames", "4", "--device", "cpu", "--max-new-tokens", "2"]


def clip(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return encode(path, n=8 + seed, size=(64, 48))


# --- the publishers' layouts, built small ---------------------------------------------------

VIDEOMME_ROWS = [
    # videoID, duration, question_id, question, answer
    ("fFjv93ACGo8", "short", "001-1", "What colour is the square?", "A"),
    ("fFjv93ACGo8", "short", "001-2", "How many squares are there?", "C"),
    ("fFjv93ACGo8", "short", "001-3", "Where is the square?", "B"),
    ("jW0y8nOq0gk", "long", "601-1", "What happens at the end?", "D"),
    ("missingVid0", "medium", "301-1", "Which scene comes first?", "A"),
]


def make_videomme(root: Path) -> Path:
    columns = {name: [] for name in videomme.COLUMNS}
    for number, (video_id, duration, qid, question, answer) in enumerate(VIDEOMME_ROWS):
        values = {"video_id": f"{number:03d}", "duration": duration, "domain": "Knowledge",
                  "sub_category": "Humanity & History", "url": f"https://youtu.be/{video_id}",
                  "videoID": video_id, "question_id": qid, "task_type": "Counting Problem",
                  "question": question,
                  "options": ["A. Red.", "B. Green.", "C. Two.", "D. It fades out."],
                  "answer": answer}
        for name in videomme.COLUMNS:
            columns[name].append(values[name])
    (root / "videomme").mkdir(parents=True)
    pq.write_table(pa.table(columns), root / "videomme" / "test-00000-of-00001.parquet")
    clip(root / "data" / "fFjv93ACGo8.mp4", 0)
    clip(root / "data" / "jW0y8nOq0gk.mp4", 1)
    return root


def make_mvbench(root: Path) -> Path:
    tasks = {"action_antonym": ("ssv2_video_mp4", ["a.webm.mp4", "b.mp4"]),
             "object_shuffle": ("perception/videos", ["c.mp4"])}
    for seed, (task, (folder, videos)) in enumerate(tasks.items()):
        rows = [{"video": video, "question": "What is the person doing?",
                 "candidates": ["Pushing something.", "Pulling something.", "Not sure"],
                 "answer": "Pulling something."} for video in videos]
        (root / "json").mkdir(parents=True, exist_ok=True)
        (root / "json" / f"{task}.json").write_text(json.dumps(rows))
        for video in videos:
            clip(root / "video" / folder / video, seed)
    for task in mvbench.SUBTASKS:  # the other 18 tasks: present, empty
        path = root / "json" / f"{task}.json"
        if not path.exists():
            path.write_text("[]")
    return root


def make_mlvu(root: Path) -> Path:
    (root / "json").mkdir(parents=True)
    (root / "json" / "1_plotQA.json").write_text(json.dumps([
        {"video": "movie101_66.mp4", "duration": 246,
         "question": "What color is the main male character in the video?",
         "candidates": ["Yellow", "Red", "Green", "Blue"], "answer": "Yellow",
         "question_type": "plotQA"}]))
    (root / "json" / "4_count.json").write_text(json.dumps([
        {"video": "count_126.mp4", "duration": 572.86,
         "question": "How many times does the 'playing trombone' scene appear?",
         "candidates": ["2", "1", "5", "4"], "answer": "1", "question_type": "count"}]))
    for name in mlvu.TASK_FILES:  # the other 5 task types: present, empty
        path = root / "json" / f"{name}.json"
        if not path.exists():
            path.write_text("[]")
    clip(root / "video" / "1_plotQA" / "movie101_66.mp4", 0)
    clip(root / "video" / "count" / "count_126.mp4", 1)  # the folder without its number
    return root


def make_lvb(root: Path) -> Path:
    rows = [{"id": "86CxyhFV9MI_0", "video_id": "86CxyhFV9MI", "video_path": "86CxyhFV9MI.mp4",
             "question": "What is in the centre of the frame?",
             "candidates": ["A square", "A circle", "Nothing", "Two squares"],
             "correct_choice": 0, "duration_group": 15, "question_category": "S2E",
             "subtitle_path": "86CxyhFV9MI_en.json", "duration": 2.0},
            {"id": "86CxyhFV9MI_1", "video_id": "86CxyhFV9MI", "video_path": "86CxyhFV9MI.mp4",
             "question": "Does the colour change?", "option0": "Yes", "option1": "No",
             "option2": "N/A", "option3": "N/A", "option4": "N/A",
             "correct_choice": 1, "duration_group": 15, "question_category": "E2O",
             "subtitle_path": "86CxyhFV9MI_en.json", "duration": 2.0}]
    root.mkdir(parents=True, exist_ok=True)
    (root / "lvb_val.json").write_text(json.dumps(rows))
    clip(root / "videos" / "86CxyhFV9MI.mp4")
    return root


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval_data")
    return {"videomme": make_videomme(root / "Video-MME"),
            "mvbench": make_mvbench(root / "MVBench"),
            "mlvu": make_mlvu(root / "MLVU"),
            "longvideobench": make_lvb(root / "LongVideoBench")}


# --- prompts, as lmms-eval's task files build them (facts) -------------------------------------

def test_videomme_prompts_are_lmms_evals():
    options = ["A. Red.", "B. Green.", "C. Two.", "D. It fades out."]
    assert videomme.prompt("What colour is the square?", options) == (
        "Select the best answer to the following multiple-choice question based on the video "
        "and the subtitles. Respond with only the letter (A, B, C, or D) of the correct "
        "option.\nWhat colour is the square?\nA. Red.\nB. Green.\nC. Two.\nD. It fades out."
        "\n\nAnswer with the option's letter from the given choices directly.")
    assert videomme.prompt("What colour is the square?", options, "qwen3_vl") == (
        "Question: What colour is the square?\nOptions:\nA. Red.\nB. Green.\nC. Two.\n"
        "D. It fades out.\nAnswer with the option letter only.")
    assert videomme.prompt("Q?", ["A. x", "B. y"], "llava_vid").endswith("\nB. y\nThe best "
                                                                         "answer is:")
    assert videomme.MAX_NEW_TOKENS == 16


def test_mvbench_prompt_is_lmms_evals():
    assert mvbench.prompt("What is the person doing?", ["Pushing", "Pulling"]) == (
        "Question:What is the person doing?\nOption:\n(A) Pushing\n(B) Pulling\n"
        "Only give the best option.\n")
    assert len(mvbench.SUBTASKS) == 20 and mvbench.MAX_NEW_TOKENS == 16
    assert mvbench.SOURCES["episodic_reasoning"] == "tvqa/video_fps3_hq_segment"


def test_mlvu_prompt_is_lmms_evals_post_prompt():
    assert mlvu.prompt("What color?", ["Yellow", "Red"]) == (
        "What color?\n(A) Yellow\n(B) Red\nOnly give the best option.\nBest option: (")
    assert mlvu.prompt("What color?", ["Yellow", "Red"], "plm").endswith(
        "(B) Red\nOnly give the best option.")
    assert mlvu.MAX_NEW_TOKENS == 16


def test_longvideobench_prompt_is_lmms_evals():
    assert lvb.prompt("Does it change?", ["Yes", "No"]) == (
        "Does it change?\nA. Yes\nB. No\n"
        "Answer with the option's letter from the given choices directly.\n")
    assert lvb.MAX_NEW_TOKENS == 32


# --- answer extraction on the answers real models give ------------------------------------------

@pytest.mark.parametrize(("text", "letter"), [
    ("(B)", "B"), ("B.", "B"), ("The answer is B", "B"), ("B. Green.", "B"),
    ("b", ""),  # lmms-eval looks for capitals only: no answer
    ("Green.", ""),  # an option's text alone picks no letter...
    ("Dog", "D"),  # ...unless a capital A-D is in it (the fallback takes any occurrence)
    ("A cat, so the best answer is C.", "A"),  # a letter at the start outranks the phrase
    ("I think it is (C)", "C"), ("", ""),
])
def test_videomme_and_mlvu_extraction(text, letter):
    assert mcq_letter(text, "ABCD") == letter


@pytest.mark.parametrize(("text", "form"), [
    ("(B)", "B"), ("B.", "B"), ("The answer is B", "B"), ("b", "B"),
    ("B. Pulling something.", "B"), ("(B) Pulling something.", "B"),
    ("Pulling something.", "pulling something"),  # the text is not mapped to its letter
    ("a person pulls", "A"),  # the article is a standalone A for mcq_acc
])
def test_mvbench_extraction(text, form):
    assert mvbench_normal_form(text) == form


@pytest.mark.parametrize(("text", "letter"), [
    ("(B)", "B"), ("B.", "B"), ("The answer is B", "B"), ("The best answer is C.", "C"),
])
def test_longvideobench_extraction(text, letter):
    assert lvb_letter(text, "ABCD", "q1") == letter


def test_longvideobench_guesses_a_seeded_letter_when_none_is_found():
    guesses = {lvb_letter(text, "ABCD", "q1") for text in ("b", "a square", "none")}
    assert len(guesses) == 1 and guesses <= set("ABCD")  # the same guess for one question
    assert lvb_letter("b", "ABCD", "q1") == lvb_letter("b", "ABCD", "q1")


# --- the readers ---------------------------------------------------------------------------------

def test_readers_take_the_publishers_layouts(datasets):
    found = {name: read_questions(*parse_task(name), datasets[name]) for name in TASKS}
    mme = found["videomme"]
    assert [q.id for q in mme] == ["001-1", "001-2", "001-3", "601-1", "301-1"]
    assert [q.answer for q in mme] == ["A", "C", "B", "D", "A"]
    assert mme[0].groups == {"duration": "short"} and mme[0].max_new_tokens == 16
    assert mme[0].video.endswith("data/fFjv93ACGo8.mp4") and mme[0].error is None
    assert mme[4].error == f"video not found: {datasets['videomme'] / 'data/missingVid0.mp4'}"
    mvb = found["mvbench"]
    assert [(q.id, q.answer) for q in mvb] == [("action_antonym-0", "B"),
                                               ("action_antonym-1", "B"),
                                               ("object_shuffle-0", "B")]
    assert mvb[2].video.endswith("video/perception/videos/c.mp4")
    assert all(q.error is None for q in mvb) and mvb[0].groups == {"subtask": "action_antonym"}
    ml = found["mlvu"]
    assert [(q.answer, q.groups["task_type"]) for q in ml] == [("A", "plotQA"), ("B", "count")]
    assert all(q.error is None for q in ml)
    lv = found["longvideobench"]
    assert [(q.id, q.answer, q.options) for q in lv] == [
        ("86CxyhFV9MI_0", "A", ("A square", "A circle", "Nothing", "Two squares")),
        ("86CxyhFV9MI_1", "B", ("Yes", "No"))]
    assert lv[0].max_new_tokens == 32
    assert lv[0].groups == {"duration_group": "15", "question_category": "S2E"}


def test_mlvu_groups_by_task_file_and_refuses_a_missing_one(datasets, tmp_path):
    """The score is the mean over the 7 task types, so a lacking file would skew it."""
    root = tmp_path / "mlvu"
    shutil.copytree(datasets["mlvu"], root)
    (root / "json" / "4_count.json").write_text(json.dumps([
        {"video": "count_126.mp4", "question": "How many?", "candidates": ["1", "2"],
         "answer": "2", "question_type": "Counting"}]))  # a label other than the file's
    questions = read_questions(*parse_task("mlvu"), root)
    assert [q.groups["task_type"] for q in questions] == ["plotQA", "count"]
    (root / "json" / "5_order.json").unlink()
    with pytest.raises(DatasetError, match=r"lacks 5_order\.json"):
        read_questions(*parse_task("mlvu"), root)


def test_mvbench_one_subtask_and_limit(datasets):
    task, subtask = parse_task("mvbench_action_antonym")
    assert subtask == "action_antonym"
    assert len(read_questions(task, subtask, datasets["mvbench"])) == 2
    assert len(read_questions(task, None, datasets["mvbench"], limit=1)) == 2  # 1 per subtask


def test_prompt_variants():
    assert resolve_variant(TASKS["videomme"], "auto", "qwen3_vl") == "qwen3_vl"
    assert resolve_variant(TASKS["videomme"], "auto", "qwen3_vl_moe") == "qwen3_vl"
    assert resolve_variant(TASKS["videomme"], "auto", "llava_onevision") == "default"
    assert resolve_variant(TASKS["videomme"], "auto", "llava_next_video") == "llava_vid"
    assert resolve_variant(TASKS["videomme"], "auto", "llava_onevision",
                           "lmms-lab/LLaVA-Video-7B-Qwen2") == "llava_vid"
    assert resolve_variant(TASKS["mlvu"], "auto", "llava_next_video") == "default"
    assert resolve_variant(TASKS["mvbench"], "auto", "qwen3_vl") == "default"
    with pytest.raises(DatasetError, match="--prompt-variant"):
        resolve_variant(TASKS["mvbench"], "qwen3_vl", None)


@pytest.mark.parametrize("task", list(TASKS))
def test_a_wrong_dir_is_one_line_naming_what_was_expected(task, tmp_path):
    (tmp_path / "stuff").mkdir()
    result = runner.invoke(app, ["eval", task, "--data", str(tmp_path / "stuff"), "--out",
                                 str(tmp_path / "o.jsonl"), "--model", "random:qwen2-vl-2b"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "expected" in lines[0], result.stderr
    hint = {"videomme": "videomme/test-00000-of-00001.parquet", "mvbench": "json/<task>.json",
            "mlvu": "json/<n>_<task>.json", "longvideobench": "lvb_val.json"}[task]
    assert hint in lines[0]
    assert not (tmp_path / "o.jsonl").exists()


# --- sweeps and resume, on a tiny checkpoint ----------------------------------------------------

@pytest.fixture(scope="module")
def engine(tiny_checkpoints) -> Engine:
    return Engine.load(str(tiny_checkpoints("qwen2_vl")), LoadOptions(device="cpu",
                                                                     attention="sdpa"))


OPTIONS = BatchOptions(SamplingOptions(frames=4), CompressionOptions(),
                       GenerationOptions(max_new_tokens=2))


def sweep(engine, questions, chosen, out, done=None, options=OPTIONS):
    items, index = sweep_items(questions, chosen)
    with ResultWriter.open(str(out)) as writer:
        sink = ScoringSink(writer, index)
        run_batch(engine, items, options, sink, done)
    return records(out.read_text())



def test_a_sweep_encodes_each_video_once(engine, datasets, tmp_path, encoder_calls):
    questions = read_questions(TASKS["videomme"], None, datasets["videomme"])
    chosen = settings([0.5, 0.25], ["vidcom2", "random"])
    assert len(chosen) == 4
    rows = sweep(engine, questions, chosen, tmp_path / "sweep.jsonl")
    assert len(encoder_calls) == 2  # two videos (the third is missing), 4 settings, 5 questions
    assert len(rows) == 5 * 4
    by_setting = Counter(row["setting"] for row in rows)
    assert by_setting == {"vidcom2@0.5": 5, "random@0.5": 5, "vidcom2@0.25": 5,
                          "random@0.25": 5}
    errors = [row for row in rows if "error" in row]
    assert len(errors) == 4 and all("video not found" in row["error"] for row in errors)
    answered = [row for row in rows if "error" not in row]
    assert all(row["method"] == row["setting"].split("@")[0] for row in answered)
    assert all(set(row) >= {"pred", "correct", "expected", "question_id", "groups"}
               for row in answered)
    kept = {row["setting"]: row["tokens"]["visual_kept"] for row in answered
            if row["question_id"] == "001-1"}
    assert kept["vidcom2@0.25"] < kept["vidcom2@0.5"]


def test_a_sweep_without_reuse_gives_the_same_answers(engine, datasets, tmp_path):
    questions = read_questions(TASKS["mlvu"], None, datasets["mlvu"])
    chosen = settings([0.5, 0.25], ["vidcom2", "random"])

    def answers(rows):
        return {row["id"]: (row["answer"], row["tokens"]["visual_kept"], row["method"],
                            row["ratio"]) for row in rows}

    reused = sweep(engine, questions, chosen, tmp_path / "reuse.jsonl")
    alone = sweep(engine, questions, chosen, tmp_path / "alone.jsonl",
                  options=replace(OPTIONS, reuse=False, batch_size=2))
    assert answers(reused) == answers(alone) and len(reused) == 8


def test_ratio_one_is_asked_once():
    assert settings([1.0, 0.25], ["vidcom2", "random"]) == [
        Setting("vidcom2", 1.0), Setting("vidcom2", 0.25), Setting("random", 0.25)]


def test_a_killed_sweep_resumes_to_every_record_once(engine, datasets, tmp_path, monkeypatch):
    questions = read_questions(TASKS["mlvu"], None, datasets["mlvu"])
    chosen = settings([1.0, 0.5], ["vidcom2"])
    out = tmp_path / "killed.jsonl"
    real = engine.ask_open
    calls = []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the first setting of the second video
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "ask_open", killed)
    with pytest.raises(KeyboardInterrupt):
        sweep(engine, questions, chosen, out)
    assert len(records(out.read_text())) == 2
    monkeypatch.setattr(engine, "ask_open", real)
    rows = sweep(engine, questions, chosen, out, done=existing_ids(out))
    assert Counter(row["id"] for row in rows) == {
        f"mlvu/{question.id}|{setting.label}": 1 for question in questions
        for setting in chosen}


def test_eval_command_prints_the_summary_and_resumes(tiny_checkpoints, datasets, tmp_path):
    out = tmp_path / "lvb.jsonl"
    args = ["eval", "longvideobench", "--data", str(datasets["longvideobench"]), "--out",
            str(out), "-m", str(tiny_checkpoints("qwen2_vl")), *FAST, "--ratios", "1.0,0.5",
            "--methods", "vidcom2,random"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["task"] == "longvideobench" and summary["settings"] == [
        "vidcom2@1", "vidcom2@0.5", "random@0.5"]
    overall = [row for row in summary["rows"] if row["subset"] == "all"]
    assert [row["questions"] for row in overall] == [2, 2, 2]
    assert overall[0]["of_full"] in (None, 100.0)
    assert all(row["visual_tokens"] > 0 and row["prefill_ms"] > 0 for row in overall)
    assert {row["subset"] for row in summary["rows"]} == {
        "all", "duration_group=15", "question_category=S2E", "question_category=E2O"}
    assert len(records(out.read_text())) == 6
    again = runner.invoke(app, [*args, "--resume"])  # nothing left to do: the table again
    assert again.exit_code == 0, again.output
    assert "longvideobench" in again.stdout and "duration_group=15" in again.stdout
    assert len(records(out.read_text())) == 6


def test_summary_scores_percent_of_full_and_mlvu_means_task_types():
    def row(setting, method, ratio, group, correct, total_ms=1000.0):
        return {"setting": setting, "method": method, "ratio": ratio,
                "groups": {"task_type": group}, "answer": "x", "correct": correct,
                "counted": True, "tokens": {"visual_kept": 100 * ratio},
                "timing_ms": {"prefill": 10.0, "total": total_ms}}

    records_ = [row("vidcom2@1", "vidcom2", 1.0, "plotQA", True),
                row("vidcom2@1", "vidcom2", 1.0, "plotQA", True),
                row("vidcom2@1", "vidcom2", 1.0, "count", True),
                row("vidcom2@0.25", "vidcom2", 0.25, "plotQA", True),
                row("vidcom2@0.25", "vidcom2", 0.25, "plotQA", False),
                row("vidcom2@0.25", "vidcom2", 0.25, "count", True),
                {"setting": "vidcom2@0.25", "method": "vidcom2", "ratio": 0.25,
                 "groups": {"task_type": "count"}, "error": "video not found: x"}]
    summary = summarize(records_, "mlvu", ["vidcom2@1", "vidcom2@0.25"])
    overall = {row["ratio"]: row for row in summary["rows"] if row["subset"] == "all"}
    assert overall[0.25]["accuracy"] == pytest.approx(200 / 3)  # over the answered questions
    assert overall[0.25]["score"] == pytest.approx(75.0)  # mean of plotQA 50 and count 100
    assert overall[0.25]["of_full"] == pytest.approx(75.0)
    assert overall[0.25]["errors"] == 1 and overall[0.25]["questions"] == 4
    assert overall[0.25]["visual_tokens"] == 25 and overall[0.25]["seconds_per_question"] == 1


def test_mvbench_overall_is_the_mean_of_its_subtasks_and_videomme_pools_questions():
    def row(group_name, group, correct):
        return {"setting": "vidcom2@1", "method": "vidcom2", "ratio": 1.0,
                "groups": {group_name: group}, "answer": "x", "correct": correct,
                "counted": True, "tokens": {"visual_kept": 10},
                "timing_ms": {"prefill": 1.0, "total": 1.0}}

    answers = [("a", True), ("a", True), ("a", True), ("b", False)]  # 100% and 0%
    mvb = summarize([row("subtask", *pair) for pair in answers], "mvbench", ["vidcom2@1"])
    mme = summarize([row("duration", *pair) for pair in answers], "videomme", ["vidcom2@1"])
    assert mvb["rows"][0]["subset"] == "all" and mvb["rows"][0]["score"] == pytest.approx(50.0)
    assert mvb["rows"][0]["accuracy"] == pytest.approx(75.0) and "subtask" in mvb["score"]
    assert mme["rows"][0]["score"] == pytest.approx(75.0) and mme["score"] == "accuracy"


def test_a_sigkilled_eval_resumes_to_every_record_once(tiny_checkpoints, tmp_path):
    """A real kill part-way (the batch runner's complete lines), then --resume."""
    root = tmp_path / "LVB"
    rows = [{"id": f"q{number}", "video_path": f"v{number}.mp4", "question": "What is it?",
             "candidates": ["A square", "A circle"], "correct_choice": number % 2,
             "duration_group": 15} for number in range(30)]
    root.mkdir()
    (root / "lvb_val.json").write_text(json.dumps(rows))
    for number in range(30):
        clip(root / "videos" / f"v{number}.mp4", number % 3)
    out, log = tmp_path / "out.jsonl", tmp_path / "stderr.txt"
    args = ["eval", "longvideobench", "--data", str(root), "--out", str(out), "-m",
            str(tiny_checkpoints("qwen2_vl")), *FAST, "--min-pixels", "1024",
            "--max-pixels", "4096", "--ratios", "1.0,0.5"]
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", "from vidcom2_cli.cli import main; main()", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 120
        while not (out.exists() and out.read_bytes().count(b"\n") >= 3):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    before = out.read_bytes().count(b"\n")
    assert 3 <= before < 60, "the run was not cut part-way"
    result = runner.invoke(app, [*args, "--resume", "--json"])
    assert result.exit_code == 0, result.output
    after = records(out.read_text())
    assert Counter(row["id"] for row in after) == {
        f"longvideobench/q{number}|vidcom2@{ratio}": 1 for number in range(30)
        for ratio in ("1", "0.5")}
    overall = [row for row in json.loads(result.stdout)["rows"] if row["subset"] == "all"]
    assert [row["questions"] for row in overall] == [30, 30]


def test_an_unknown_method_is_one_line_naming_methods(datasets, tmp_path):
    result = runner.invoke(app, ["eval", "mlvu", "--data", str(datasets["mlvu"]), "--out",
                                 str(tmp_path / "o.jsonl"), "--methods", "vidcom2,nosuch"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --methods:") and "nosuch" in lines[0]


@pytest.mark.parametrize("argv", [["eval", "--help"], ["eval", "videomme", "--data", ".",
                                                       "--out", "o.jsonl"]],
                         ids=["help", "wrong dir"])
def test_eval_help_and_a_wrong_dir_never_import_torch(argv, tmp_path):
    code = ("import sys; from vidcom2_cli.cli import main; sys.argv[0] = 'vidcom2'\n"
            "try:\n    main()\nexcept SystemExit as done:\n    code = done.code\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules), code)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert done.stdout.strip().splitlines()[-1] in ("[] 0", "[] 2"), done.stdout + done.stderr


def test_a_sweep_over_methods_that_read_vision_signals_still_encodes_once(
        engine, datasets, tmp_path, encoder_calls):
    """FastVID and VisionZip read signals from the tower: the run expects every setting's
    before the first encoding, so the one encoding serves them all."""
    questions = read_questions(TASKS["mlvu"], None, datasets["mlvu"])
    chosen = with_method_options(settings([1.0, 0.5], ["vidcom2", "fastvid", "visionzip"]),
                                 (("tau", 0.8),))
    assert [setting.options for setting in chosen] == [(), (), (("tau", 0.8),), ()]
    rows = sweep(engine, questions, chosen, tmp_path / "signals.jsonl")
    assert len(encoder_calls) == 2 and len(rows) == 2 * 4
    assert not [row for row in rows if "error" in row], rows
    assert {row["method"] for row in rows} == {"vidcom2", "fastvid", "visionzip"}


def test_a_method_option_no_method_has_is_refused():
    with pytest.raises(InputError, match="--method-option: none of the methods"):
        with_method_options(settings([0.5], ["vidcom2", "random"]), (("tau", 0.8),))
    with pytest.raises(InputError, match=r"--method-option: .*tau must be in \[-1, 1\]"):
        with_method_options(settings([0.5], ["vidcom2", "fastvid"]), (("tau", 7.0),))
    shared = with_method_options(settings([0.5], ["fastvid", "holitom", "visionzip"]),
                                 (("tau", 0.7),))
    assert [setting.options for setting in shared] == [(("tau", 0.7),), (("tau", 0.7),), ()]


def test_a_question_lacking_a_field_is_one_line_naming_file_and_field(datasets, tmp_path):
    root = tmp_path / "LVB"
    root.mkdir()
    (root / "lvb_val.json").write_text(json.dumps([{"video_path": "a.mp4", "question": "?"}]))
    with pytest.raises(DatasetError, match=r"lvb_val.json: question 0 lacks correct_choice"):
        read_questions(TASKS["longvideobench"], None, root)


def test_videomme_on_qwen3_vl_gets_the_qwen3_vl_prompt(tiny_checkpoints, datasets, tmp_path):
    out = tmp_path / "q3.jsonl"
    result = runner.invoke(app, ["eval", "videomme", "--data", str(datasets["videomme"]),
                                 "--out", str(out), "-m", str(tiny_checkpoints("qwen3_vl")),
                                 *FAST, "--limit", "1", "--ratios", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = records(out.read_text())
    assert row["question"] == videomme.prompt(
        "What colour is the square?", ["A. Red.", "B. Green.", "C. Two.", "D. It fades out."],
        "qwen3_vl")
    assert row["question"].startswith("Question: What colour")


def test_missing_videos_are_named_before_the_model_loads(tiny_checkpoints, datasets, tmp_path,
                                                         monkeypatch):
    """The run goes on without them (error records), but the user learns which they are at
    once, on one stderr line, not only as a count at the end."""
    from vidcom2_cli.engine import Engine

    def no_load(*args, **kwargs):
        raise RuntimeError("stop after the preflight")

    monkeypatch.setattr(Engine, "load", no_load)
    result = runner.invoke(app, ["eval", "videomme", "--data", str(datasets["videomme"]),
                                 "--out", str(tmp_path / "m.jsonl"), "--device", "cpu",
                                 "-m", str(tiny_checkpoints("qwen2_vl"))])
    first = result.stderr.splitlines()[0]
    assert first == "1 video not found (1 question): data/missingVid0.mp4"
