"""`vidcom2 eval` as lmms-eval at commit 75571cfe, issue 27: MVBench's all-empty subtask scores
0 (``... if total_answered > 0 else 0``), breakdowns in their natural order, the missing videos
named, Video-MME under its current hub name, and MLVU dev read from lmms-eval's own download
(the parquet of ``sy1998/MLVU_dev`` and its video archives)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from odd_videos import encode
from typer.testing import CliRunner

from vidcom2_cli.cli import app
from vidcom2_cli.evaluation import DatasetError, mlvu, mvbench, parse_task, read_questions
from vidcom2_cli.evaluation.common import EvalQuestion
from vidcom2_cli.evaluation.missing import missing_videos, missing_videos_line
from vidcom2_cli.evaluation.summary import summarize

runner = CliRunner()


def record(group: str, value: str, answer: str = "x", correct: bool = True, counted: bool = True,
           setting: str = "vidcom2@1") -> dict:
    method, ratio = setting.split("@")
    return {"setting": setting, "method": method, "ratio": float(ratio),
            "groups": {group: value}, "answer": answer, "correct": correct,
            "counted": counted, "tokens": {"visual_kept": 10},
            "timing_ms": {"prefill": 1.0, "total": 1.0}}


# --- scores -----------------------------------------------------------------------------------

def test_an_mvbench_subtask_whose_answers_are_all_empty_scores_0_and_counts_in_the_mean():
    records = [record("subtask", "action_sequence"), record("subtask", "action_sequence"),
               record("subtask", "moving_count", answer="", correct=False, counted=False),
               record("subtask", "moving_count", answer="", correct=False, counted=False)]
    summary = summarize(records, "mvbench", ["vidcom2@1"])
    rows = {row["subset"]: row for row in summary["rows"]}
    assert rows["subtask=moving_count"]["score"] == 0.0  # lmms-eval: 0, not "-"
    assert rows["subtask=action_sequence"]["score"] == 100.0
    assert rows["all"]["score"] == pytest.approx(50.0)  # the mean over both subtasks


def test_a_subtask_with_no_answer_at_all_has_no_score():
    """Every video missing: nothing was asked, so there is nothing to score (shown "-")."""
    error = {**record("subtask", "moving_count"), "error": "video not found: x"}
    summary = summarize([record("subtask", "action_sequence"), error], "mvbench", ["vidcom2@1"])
    rows = {row["subset"]: row for row in summary["rows"]}
    assert rows["subtask=moving_count"]["score"] is None
    assert rows["all"]["score"] == 100.0


# --- the order of the breakdown rows ----------------------------------------------------------

def subsets(task: str, group: str, values: list[str]) -> list[str]:
    summary = summarize([record(group, value) for value in values], task, ["vidcom2@1"])
    return [row["subset"] for row in summary["rows"]]


def test_videomme_durations_come_short_medium_long():
    assert subsets("videomme", "duration", ["long", "short", "medium", "long"]) == [
        "all", "duration=short", "duration=medium", "duration=long"]


def test_mvbench_subtasks_come_as_lmms_eval_lists_them():
    shuffled = list(reversed(mvbench.SUBTASKS))
    assert subsets("mvbench", "subtask", shuffled)[1:] == [
        f"subtask={name}" for name in mvbench.SUBTASKS]
    assert mvbench.SUBTASKS[:3] == ("action_sequence", "moving_count", "action_prediction")


def test_mlvu_task_types_come_as_mlvu_numbers_them():
    assert subsets("mlvu", "task_type", ["topic_reasoning", "count", "plotQA", "needle"])[1:] == [
        "task_type=plotQA", "task_type=needle", "task_type=count", "task_type=topic_reasoning"]


def test_longvideobench_durations_by_length_then_categories():
    records = [{**record("duration_group", duration), "groups": {
        "duration_group": duration, "question_category": category}}
        for duration, category in (("600", "T3O"), ("15", "E2O"), ("3600", "S2E"),
                                   ("60", "?"), ("600", "O2E"))]
    summary = summarize(records, "longvideobench", ["vidcom2@1"])
    assert [row["subset"] for row in summary["rows"]] == [
        "all", "duration_group=15", "duration_group=60", "duration_group=600",
        "duration_group=3600", "question_category=E2O", "question_category=O2E",
        "question_category=S2E", "question_category=T3O", "question_category=?"]


# --- missing videos, named --------------------------------------------------------------------

def question(video: str, error: str | None = None) -> EvalQuestion:
    return EvalQuestion("videomme", video, video, "prompt", (), "A", 16, error=error)


def test_the_missing_videos_are_named_on_one_line_that_fits_80_columns(tmp_path):
    root = tmp_path / "Video-MME"
    missing = [question(str(root / "data" / f"clip{n:02d}.mp4"),
                        f"video not found: {root / 'data' / f'clip{n:02d}.mp4'}")
               for n in range(15) for _ in range(2)]  # 15 videos, 2 questions each
    found = [question(str(root / "data" / "here.mp4"))]
    broken = [question(str(root / "data" / "bad.mp4"), "answer 'E' is not a candidate")]
    questions = [*found, *missing, *broken]
    assert list(missing_videos(questions).values()) == [2] * 15
    line = missing_videos_line(questions, root, "mme.jsonl")
    assert line is not None and len(line) <= 80
    assert line.startswith("15 videos not found (30 questions): data/clip00.mp4, ")
    shown = line.split(": ", 1)[1].split(", +")[0].split(", ")
    assert all(name in {f"data/clip{n:02d}.mp4" for n in range(15)} for name in shown)
    assert line.endswith(f", +{15 - len(shown)} more in mme.jsonl")
    assert missing_videos_line(found + broken, root, "mme.jsonl") is None


def test_a_few_missing_videos_are_all_named(tmp_path):
    questions = [question(str(tmp_path / "v" / "a.mp4"), "video not found: a"),
                 question(str(tmp_path / "v" / "b.mp4"), "video not found: b")]
    assert missing_videos_line(questions, tmp_path, "-") == (
        "2 videos not found (2 questions): v/a.mp4, v/b.mp4")
    assert missing_videos_line(questions[:1], tmp_path, "-") == (
        "1 video not found (1 question): v/a.mp4")


def test_paths_too_long_to_fit_are_counted_not_cut(tmp_path):
    long = str(tmp_path / ("x" * 90 + ".mp4"))
    line = missing_videos_line([question(long, "video not found: x")], tmp_path, "-")
    assert line == "1 video not found (1 question), listed in the error records"


# --- Video-MME's hub name ---------------------------------------------------------------------

def test_videomme_is_named_as_lmms_eval_reads_it_now(tmp_path):
    with pytest.raises(DatasetError, match="lmms-eval/Video-MME"):
        read_questions(*parse_task("videomme"), tmp_path)


# --- MLVU dev as lmms-eval downloads it -------------------------------------------------------

ROWS = [  # as sy1998/MLVU_dev's mlvu/test-00000-of-00001.parquet holds them
    {"video_name": "needle_32.mp4", "duration": 467.98, "task_type": "needle",
     "question": "What does the man hold?\n(A) A cup\n(B) A phone\n(C) A book\n(D) A key\n",
     "candidates": ["A cup", "A phone", "A book", "A key"], "answer": "B",
     "question_id": "Q0"},
    {"video_name": "movie101_66.mp4", "duration": 246.0, "task_type": "plotQA",
     "question": "What colour is the car?\n(A) Red\n(B) Blue\n(C) Green\n(D) Black\n",
     "candidates": ["Red", "Blue", "Green", "Black"], "answer": "C", "question_id": "Q0"},
    {"video_name": "count_126.mp4", "duration": 572.86, "task_type": "count",
     "question": "How many times?\n(A) 2\n(B) 1\n(C) 5\n(D) 4\n",
     "candidates": ["2", "1", "5", "4"], "answer": "A", "question_id": "Q1"},
    {"video_name": "ego_7.mp4", "duration": 180.0, "task_type": "ego",
     "question": "Where did I put the keys?\n(A) Desk\n(B) Bag\n(C) Door\n(D) Car\n",
     "candidates": ["Desk", "Bag", "Door", "Car"], "answer": "D", "question_id": "Q2"},
]


def make_mlvu_download(root: Path) -> Path:
    """The parquet; one video unpacked, two still in the archive, one nowhere."""
    (root / "mlvu").mkdir(parents=True)
    table = pa.table({name: [row[name] for row in ROWS] for name in ROWS[0]})
    pq.write_table(table, root / "mlvu" / "test-00000-of-00001.parquet")
    encode(root / "needle_32.mp4", n=8, size=(64, 48))
    clips = root.parent / "clips"
    clips.mkdir()
    with zipfile.ZipFile(root / "video_part_1.zip", "w") as archive:
        for seed, name in enumerate(("movie101_66.mp4", "count_126.mp4")):
            archive.write(encode(clips / name, n=8 + seed, size=(64, 48)), name)
    return root


def test_mlvu_reads_lmms_evals_parquet_and_unpacks_the_videos_it_needs(tmp_path):
    root = make_mlvu_download(tmp_path / "MLVU_dev")
    first = read_questions(*parse_task("mlvu"), root, limit=2)
    assert [q.video for q in first] == [str(root / "needle_32.mp4"),
                                        str(root / "movie101_66.mp4")]
    assert (root / "movie101_66.mp4").is_file() and not (root / "count_126.mp4").exists()
    questions = read_questions(*parse_task("mlvu"), root)
    assert [q.id for q in questions] == ["needle-Q0", "plotQA-Q0", "count-Q1", "ego-Q2"]
    assert [q.answer for q in questions] == ["B", "C", "A", "D"]
    assert [q.groups["task_type"] for q in questions] == ["needle", "plotQA", "count", "ego"]
    # lmms-eval's doc_to_text: pre-prompt + the parquet's question + post-prompt.
    assert questions[0].prompt == (ROWS[0]["question"] + "\nOnly give the best option.\n"
                                   "Best option: (")
    plm = read_questions(*parse_task("mlvu"), root, variant="plm")
    assert plm[0].prompt == ROWS[0]["question"] + "\nOnly give the best option."
    assert [q.error for q in questions[:3]] == [None, None, None]
    assert questions[3].error == f"video not found: {root / 'ego_7.mp4'}"
    assert mlvu.score(questions[0], "(B) A phone") == ("B", True, True)
    line = missing_videos_line(questions, root, "mlvu.jsonl")
    assert line == "1 video not found (1 question): ego_7.mp4"


def test_mlvu_parquet_without_a_needed_column_is_one_line(tmp_path):
    (tmp_path / "mlvu").mkdir()
    pq.write_table(pa.table({"question": ["q"], "answer": ["A"]}),
                   tmp_path / "mlvu" / "test-00000-of-00001.parquet")
    with pytest.raises(DatasetError, match=r"lacks the column.*video_name, task_type"):
        read_questions(*parse_task("mlvu"), tmp_path)


@pytest.mark.slow
def test_eval_mlvu_on_lmms_evals_download(tiny_checkpoints, tmp_path):
    root = make_mlvu_download(tmp_path / "MLVU_dev")
    out = tmp_path / "mlvu.jsonl"
    result = runner.invoke(app, [
        "eval", "mlvu", "--data", str(root), "--out", str(out), "--json", "--ratios", "1.0",
        "-m", str(tiny_checkpoints("qwen2_vl")), "--frames", "4", "--device", "cpu",
        "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [row["subset"] for row in summary["rows"]] == [
        "all", "task_type=plotQA", "task_type=needle", "task_type=ego", "task_type=count"]
    overall = summary["rows"][0]
    assert overall["questions"] == 4 and overall["errors"] == 1
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(row["question_id"] for row in written) == [
        "count-Q1", "ego-Q2", "needle-Q0", "plotQA-Q0"]
