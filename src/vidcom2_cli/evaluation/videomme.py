"""Video-MME (``videomme``, no subtitles) as lmms-eval runs it, read from the files of the
hub dataset ``lmms-eval/Video-MME`` (the ``dataset_path`` of ``videomme.yaml`` since lmms-eval
moved its video datasets there from ``lmms-lab/Video-MME``, whose files are the same):
``videomme/test-00000-of-00001.parquet`` (columns
video_id, duration, domain, sub_category, url, videoID, question_id, task_type, question,
options, answer) and the videos ``data/<videoID>.mp4`` (unzipped from the archives).

Followed: ``lmms_eval/tasks/videomme/videomme.yaml`` and ``utils.py`` at lmms-eval commit
75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3: ``videomme_doc_to_text`` (which, at that commit,
says "based on the video and the subtitles" in the no-subtitle task too), its ``qwen3_vl``
format, the per-model post prompts of ``lmms_eval_specific_kwargs``, 16 new tokens,
``extract_mcq_answer`` over A-D, and the short/medium/long breakdown.
"""

from __future__ import annotations

from pathlib import Path

from ..multiple_choice import mcq_letter
from .common import DatasetError, EvalQuestion, find_video

NAME = "videomme"
MAX_NEW_TOKENS = 16
DURATIONS = ("short", "medium", "long")  # lmms-eval's VIDEO_TYPE, the summary's row order
INSTRUCTION = ("Select the best answer to the following multiple-choice question based on the "
               "video and the subtitles. Respond with only the letter (A, B, C, or D) of the "
               "correct option.")
# lmms_eval_specific_kwargs of videomme.yaml: (pre_prompt, post_prompt); the default layout
# uses only the post prompt, the qwen3_vl layout both.
VARIANTS = {
    "default": ("", "\nAnswer with the option's letter from the given choices directly."),
    "gpt4v": ("", "Answer the question with A, B, C, or D."),
    "llava_vid": ("", "The best answer is:"),
    "qwen3_vl": ("Question: ", "Answer with the option letter only."),
    "xcomposer2_4khd": ("[UNUSED_TOKEN_146]user\n", " Answer this question with A, B, C, or "
                        "D.[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n"),
}
COLUMNS = ("video_id", "duration", "domain", "sub_category", "url", "videoID", "question_id",
           "task_type", "question", "options", "answer")
EXPECTED = ("videomme/test-00000-of-00001.parquet (columns " + ", ".join(COLUMNS)
            + ") and the videos in data/, as in the hub dataset lmms-eval/Video-MME")


def prompt(question: str, options: list[str], variant: str = "default") -> str:
    """The text after the video (the options already read "A. ..." in the parquet)."""
    pre, post = VARIANTS[variant]
    listed = "\n".join(options)
    if variant == "qwen3_vl":
        return f"{pre}{question}\nOptions:\n{listed}\n{post}"
    return f"{INSTRUCTION}\n{question}\n{listed}\n{post}"


def parquet_file(root: Path) -> Path:
    files = sorted((root / "videomme").glob("test-*.parquet"))
    if not files:
        raise DatasetError(f"videomme: {root} is not Video-MME: expected {EXPECTED}")
    return files[0]


def read(root: Path, variant: str = "default", limit: int | None = None) -> list[EvalQuestion]:
    import pyarrow.parquet as pq

    path = parquet_file(root)
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow's own error types
        raise DatasetError(f"videomme: cannot read {path} ({error})") from None
    missing = [column for column in ("videoID", "question_id", "question", "options", "answer",
                                     "duration") if column not in table.column_names]
    if missing:
        raise DatasetError(f"videomme: {path} lacks the column(s) {', '.join(missing)}: "
                           f"expected {EXPECTED}")
    rows = table.to_pylist()[:limit]
    questions = []
    for row in rows:
        stem = root / "data" / str(row["videoID"])
        video, error = find_video([stem.with_suffix(".mp4"), stem.with_suffix(".MP4"),
                                   stem.with_suffix(".mkv")])
        options = [str(option) for option in row["options"]]
        questions.append(EvalQuestion(
            NAME, str(row["question_id"]), video, prompt(str(row["question"]), options, variant),
            tuple(options), str(row["answer"]).strip(), MAX_NEW_TOKENS,
            {"duration": str(row["duration"])}, error))
    return questions


def score(question: EvalQuestion, text: str) -> tuple[str, bool, bool]:
    """(the letter read, whether it is right, whether the question counts)."""
    letter = mcq_letter(text, "ABCD")
    return letter, letter.lower() == question.answer.lower(), True
