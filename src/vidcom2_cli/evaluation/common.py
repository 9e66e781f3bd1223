"""What the four task readers share: the question record, the dataset error, finding videos
and checking records. The answer extraction rules of the lmms-eval task files they follow
live in ``multiple_choice``, beside the batch's own rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

LMMS_EVAL_COMMIT = "75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3"


class DatasetError(ValueError):
    """DIR is not the dataset the task reads; the message says what was expected there."""


@dataclass(frozen=True)
class EvalQuestion:
    """One question of a task, read from the publisher's files.

    ``groups`` are the breakdowns the task reports it under (e.g. ``{"duration": "short"}``);
    ``error`` is set when the question cannot run (its video is missing): it becomes an error
    record, the other questions go on.
    """

    task: str
    id: str
    video: str
    prompt: str
    options: tuple[str, ...]
    answer: str  # the expected letter
    max_new_tokens: int
    groups: dict[str, str] = field(default_factory=dict)
    error: str | None = None


MISSING_VIDEO = "video not found"  # how a question's error starts when its video is missing


def find_video(candidates: list[Path]) -> tuple[str, str | None]:
    """The first existing path of ``candidates`` and None, or the first one and its error."""
    for path in candidates:
        if path.is_file():
            return str(path), None
    return str(candidates[0]), f"{MISSING_VIDEO}: {candidates[0]}"


def checked_rows(rows: object, path: Path, task: str, fields: tuple[str, ...],
                 expected: str) -> list[dict]:
    """The question records of a JSON file, each an object with ``fields``; DatasetError
    naming the file, the record and the field otherwise."""
    if not isinstance(rows, list):
        raise DatasetError(f"{task}: {path} is not a list of questions: expected {expected}")
    for index, row in enumerate(rows):
        missing = [name for name in fields if not isinstance(row, dict) or name not in row]
        if missing:
            raise DatasetError(f"{task}: {path}: question {index} lacks {', '.join(missing)}")
    return rows
