"""MLVU dev, multiple choice (``mlvu_dev``) as lmms-eval runs it, read from either of the two
ways it is distributed:

- lmms-eval's: the hub dataset ``sy1998/MLVU_dev`` (what ``mlvu_dev.yaml`` loads):
  ``mlvu/test-00000-of-00001.parquet`` (columns video_name, duration, question, candidates,
  answer, task_type, question_id; ``question`` already lists the options as "(A) ..." lines,
  ``answer`` is the letter) and the videos in the archives ``video_part_*.zip`` beside it,
  unpacked into DIR (``DIR/<video_name>``, where lmms-eval opens ``<its cache>/<video_name>``;
  ``video/`` or ``videos/`` are looked in too), or still packed: the videos a run needs are
  then unpacked into DIR (``archives``);
- MLVU's own (the hub dataset ``MLVU/MVLU``): ``json/<n>_<task>.json`` (lists of {video,
  duration, question, candidates, answer, question_type}) and the videos in
  ``video/<n>_<task>/`` (``video/<task>/`` is accepted too). The two generation tasks
  (8_sub_scene, 9_summary) are not part of ``mlvu_dev`` and are left out.

Followed: ``lmms_eval/tasks/mlvu/mlvu_dev.yaml`` and ``utils.py`` at lmms-eval commit
75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3: pre-prompt + question + post-prompt "\\nOnly give
the best option.\\nBest option: (" (the ``plm`` variant: "\\nOnly give the best option."), 16
new tokens, ``extract_mcq_answer`` over A-D compared with the answer letter, accuracy per task
type and their mean. From the JSON the question is built as the question, then one "(A) text"
line per candidate, the way the parquet's reads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..multiple_choice import LETTERS, mcq_letter, option_lines
from .archives import Archives
from .common import MISSING_VIDEO, DatasetError, EvalQuestion, checked_rows, find_video

NAME = "mlvu"
MAX_NEW_TOKENS = 16
VARIANTS = {"default": ("", "\nOnly give the best option.\nBest option: ("),
            "plm": ("", "\nOnly give the best option.")}
TASK_FILES = ("1_plotQA", "2_needle", "3_ego", "4_count", "5_order", "6_anomaly_reco",
              "7_topic_reasoning")
TASK_TYPES = tuple(re.sub(r"^\d+_", "", name) for name in TASK_FILES)  # in MLVU's numbering
EXPECTED = ("json/<n>_<task>.json (" + ", ".join(f"{name}.json" for name in TASK_FILES)
            + ") and the videos in video/<n>_<task>/, as the MLVU dev set is distributed")
COLUMNS = ("video_name", "question", "answer", "task_type")  # what lmms-eval reads of a row
EXPECTED_PARQUET = ("mlvu/test-00000-of-00001.parquet (columns " + ", ".join(COLUMNS)
                    + ") and its video_part_*.zip, as in the hub dataset sy1998/MLVU_dev")


def prompt(question: str, candidates: list[str], variant: str = "default") -> str:
    pre, post = VARIANTS[variant]
    listed = "\n".join(option_lines(candidates, "({letter}) {text}"))
    return f"{pre}{question}\n{listed}{post}"


def read(root: Path, variant: str = "default", limit: int | None = None
         ) -> list[EvalQuestion]:
    """The questions of either layout (lmms-eval's parquet first), at most ``limit``."""
    parquets = sorted((root / "mlvu").glob("*.parquet"))
    if parquets:
        return read_parquet(root, parquets[0], variant, limit)
    files = [root / "json" / f"{name}.json" for name in TASK_FILES]
    if not any(path.is_file() for path in files):
        raise DatasetError(f"mlvu: {root} is not MLVU dev: expected {EXPECTED_PARQUET}, or "
                           f"{EXPECTED}")
    return read_json(root, files, variant, limit)


def read_json(root: Path, files: list[Path], variant: str, limit: int | None
              ) -> list[EvalQuestion]:
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


def read_parquet(root: Path, path: Path, variant: str, limit: int | None
                 ) -> list[EvalQuestion]:
    """lmms-eval's rows: the prompt is the parquet's question between the variant's pre- and
    post-prompt, the expected letter its answer (or the letter of the candidate it names)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow's own error types
        raise DatasetError(f"mlvu: cannot read {path} ({error})") from None
    missing = [column for column in COLUMNS if column not in table.column_names]
    if missing:
        raise DatasetError(f"mlvu: {path} lacks the column(s) {', '.join(missing)}: expected "
                           f"{EXPECTED_PARQUET}")
    rows = table.to_pylist()[:limit]
    keys = [f"{row['task_type']}-{row.get('question_id')}" for row in rows]
    if len(set(keys)) < len(keys) or any(row.get("question_id") is None for row in rows):
        keys = [f"{row['task_type']}-{index}" for index, row in enumerate(rows)]
    archives: Archives | None = None
    pre, post = VARIANTS[variant]
    questions = []
    for key, row in zip(keys, rows, strict=True):
        name = str(row["video_name"])
        video, error = find_video([root / name, root / "video" / name, root / "videos" / name])
        if error is not None:
            archives = archives if archives is not None else Archives(root)
            video, error = _unpacked(archives, name, video, error)
        candidates = [str(text) for text in row.get("candidates") or []]
        letter = _letter(str(row["answer"]).strip(), candidates)
        questions.append(EvalQuestion(
            NAME, key, video, f"{pre}{row['question']}{post}", tuple(candidates), letter,
            MAX_NEW_TOKENS, {"task_type": str(row["task_type"])},
            error if letter else error or f"answer {row['answer']!r} is not a choice"))
    return questions


def _letter(answer: str, candidates: list[str]) -> str:
    """The expected letter: the answer itself (A-D, as in the parquet), or the letter of the
    candidate whose text it is."""
    if len(answer) == 1 and answer in LETTERS[:max(len(candidates), 4)]:
        return answer
    return LETTERS[candidates.index(answer)] if answer in candidates else ""


def _unpacked(archives: Archives, name: str, video: str, error: str) -> tuple[str, str | None]:
    """A video not found on disk, taken out of the archive that holds it (if one does)."""
    found = archives.find(name)
    if found is None:
        return video, error
    archive, member = found
    try:
        return str(archives.unpack(archive, member)), None
    except (OSError, ValueError) as problem:
        return video, f"{MISSING_VIDEO}: {video} (cannot unpack it from {archive}: {problem})"


def score(question: EvalQuestion, text: str) -> tuple[str, bool, bool]:
    letter = mcq_letter(text, "ABCD")
    return letter, letter == question.answer, True
