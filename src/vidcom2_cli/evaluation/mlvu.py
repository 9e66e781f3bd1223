"""MLVU dev, multiple choice (``mlvu_dev``) as lmms-eval runs it, read from the files of the
MLVU dev set as its authors distribute it: ``json/<n>_<task>.json`` (lists of {video,
duration, question, candidates, answer, question_type}) and the videos in
``video/<n>_<task>/`` (``video/<task>/`` is accepted too). The two generation tasks
(8_sub_scene, 9_summary) are not part of ``mlvu_dev`` and are left out.

Followed: ``lmms_eval/tasks/mlvu/mlvu_dev.yaml`` and ``utils.py`` at lmms-eval commit
75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3: question + "\\nOnly give the best option.\\nBest
option: (" (the ``plm`` variant: "\\nOnly give the best option."), 16 new tokens,
``extract_mcq_answer`` over A-D, accuracy per task type and their mean. lmms-eval reads the
parquet of ``sy1998/MLVU_dev``, whose ``question`` already lists the options; built here from
the JSON as the question, then one "(A) text" line per candidate (an assumption: that parquet
could not be checked from here).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..multiple_choice import mcq_letter, option_lines
from .common import DatasetError, EvalQuestion, checked_rows, find_video

NAME = "mlvu"
MAX_NEW_TOKENS = 16
VARIANTS = {"default": ("", "\nOnly give the best option.\nBest option: ("),
            "plm": ("", "\nOnly give the best option.")}
TASK_FILES = ("1_plotQA", "2_needle", "3_ego", "4_count", "5_order", "6_anomaly_reco",
              "7_topic_reasoning")
EXPECTED = ("json/<n>_<task>.json (" + ", ".join(f"{name}.json" for name in TASK_FILES)
            + ") and the videos in video/<n>_<task>/, as the MLVU dev set is distributed")


def prompt(question: str, candidates: list[str], variant: str = "default") -> str:
    pre, post = VARIANTS[variant]
    listed = "\n".join(option_lines(candidates, "({letter}) {text}"))
    return f"{pre}{question}\n{listed}{post}"


def read(root: Path, variant: str = "default", limit: int | None = None
         ) -> list[EvalQuestion]:
    files = [root / "json" / f"{name}.json" for name in TASK_FILES]
    if not any(path.is_file() for path in files):
        raise DatasetError(f"mlvu: {root} is not MLVU dev: expected {EXPECTED}")
    missing = [path.name for path in files if not path.is_file()]
    if missing:  # the score is a mean over the 7 task types: an absent one would skew it
        raise DatasetError(f"mlvu: {root / 'json'} lacks {', '.join(missing)}; expected "
                           f"{EXPECTED}")
    questions = []
    for name, path in zip(TASK_FILES, files, strict=True):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise DatasetError(f"mlvu: cannot read {path} ({error})") from None
        rows = checked_rows(rows, path, NAME, ("video", "question", "candidates", "answer"),
                            EXPECTED)
        plain = re.sub(r"^\d+_", "", name)
        for index, row in enumerate(rows):
            candidates = [str(text) for text in row["candidates"]]
            answer = str(row["answer"])
            letter = (option_lines(candidates, "{letter}")[candidates.index(answer)]
                      if answer in candidates else "")
            video, error = find_video([root / "video" / name / row["video"],
                                       root / "video" / plain / row["video"]])
            questions.append(EvalQuestion(
                NAME, f"{name}-{index}", video,
                prompt(str(row["question"]), candidates, variant), tuple(candidates), letter,
                MAX_NEW_TOKENS, {"task_type": plain},
                error if letter else error or f"answer {answer!r} is not a candidate"))
    return questions[:limit]


def score(question: EvalQuestion, text: str) -> tuple[str, bool, bool]:
    letter = mcq_letter(text, "ABCD")
    return letter, letter == question.answer, True
