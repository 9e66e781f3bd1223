"""LongVideoBench validation, video only (``longvideobench_val_v``) as lmms-eval runs it,
read from the files of the hub dataset ``longvideobench/LongVideoBench``: ``lvb_val.json``
(records with id, video_path, question, candidates or option0..option4, correct_choice,
duration_group, question_category, ...) and the videos in ``videos/`` (unpacked from the
tar parts).

Followed: ``lmms_eval/tasks/longvideobench/longvideobench_val_v.yaml`` and ``utils.py`` at
lmms-eval commit 75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3: question + "\\n" + "A. text" lines
+ "\\n" + "Answer with the option's letter from the given choices directly.\\n", 32 new
tokens, ``parse_multi_choice_response`` (a random letter when none is found: seeded here by
the question id), accuracy overall and per duration group.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..multiple_choice import LETTERS, lvb_letter, option_lines
from .common import DatasetError, EvalQuestion, checked_rows, find_video

NAME = "longvideobench"
MAX_NEW_TOKENS = 32
PRE_PROMPT = ""
POST_PROMPT = "Answer with the option's letter from the given choices directly.\n"
EXPECTED = ("lvb_val.json and the videos in videos/, as in the hub dataset "
            "longvideobench/LongVideoBench")


def candidates_of(row: dict) -> list[str]:
    """The options: ``candidates``, or lmms-eval's option0..option4 up to the first "N/A"."""
    if isinstance(row.get("candidates"), list):
        return [str(text) for text in row["candidates"]]
    found = []
    for index in range(5):
        option = row.get(f"option{index}")
        if option is None or option == "N/A":
            break
        found.append(str(option))
    return found


def prompt(question: str, candidates: list[str]) -> str:
    listed = "\n".join(option_lines(candidates, "{letter}. {text}"))
    return f"{PRE_PROMPT}{question}\n{listed}\n{POST_PROMPT}"


def read(root: Path, limit: int | None = None) -> list[EvalQuestion]:
    path = root / "lvb_val.json"
    if not path.is_file():
        raise DatasetError(f"longvideobench: {root} is not LongVideoBench: expected {EXPECTED}")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DatasetError(f"longvideobench: cannot read {path} ({error})") from None
    rows = checked_rows(rows, path, NAME, ("video_path", "question", "correct_choice"),
                        EXPECTED)
    questions = []
    for index, row in enumerate(rows[:limit]):
        candidates = candidates_of(row)
        video, error = find_video([root / "videos" / str(row["video_path"])])
        questions.append(EvalQuestion(
            NAME, str(row.get("id", f"lvb-{index}")), video,
            prompt(str(row["question"]), candidates), tuple(candidates),
            LETTERS[int(row["correct_choice"])], MAX_NEW_TOKENS,
            {"duration_group": str(row.get("duration_group", "?")),
             "question_category": str(row.get("question_category", "?"))}, error))
    return questions


def score(question: EvalQuestion, text: str) -> tuple[str, bool, bool]:
    letter = lvb_letter(text, LETTERS[:len(question.options)], question.id)
    return letter, letter == question.answer, True
