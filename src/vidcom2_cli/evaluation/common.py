"""What the four task readers share: the question record, the dataset error, and the answer
extraction rules of the lmms-eval task files they follow.

The rules are re-implemented here from reading lmms-eval at commit ``LMMS_EVAL_COMMIT``
(``lmms_eval/tasks/_task_utils/mcq_extract.py``, ``mvbench/utils.py``,
``longvideobench/utils.py``); they reproduce that code's behaviour, quirks included (a lower
case "b" is no answer for Video-MME and MLVU; an unparsable LongVideoBench answer is a random
letter, seeded here by the question id so that a run can be repeated).
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

LMMS_EVAL_COMMIT = "75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3"
LETTERS = string.ascii_uppercase


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


def option_lines(options: list[str] | tuple[str, ...], template: str) -> list[str]:
    """The options lettered A, B, ... with ``template`` ("({letter}) {text}", ...)."""
    return [template.format(letter=letter, text=text)
            for letter, text in zip(LETTERS, options, strict=False)]


# --- lmms-eval's shared multiple-choice extraction (Video-MME, MLVU) -------------------------

# Phrases after which the answer letter follows; checked in this order, case-insensitive.
ANSWER_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is",
    "the best answer is", "best answer is", "the correct option is", "correct option is",
    "the best option is", "best option is", "the choice is", "choice is",
    "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选",
    "答えは",
)
# How sure each kind of match is; the highest wins, then the latest position.
_RANK = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4,
         "right_paren": 3, "space": 2, "fallback": 0}
_MARKS = (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"),
          ("right_paren", "{})"), ("space", "{} "))


def mcq_letter(response: str, choices: str = "ABCD") -> str:
    """The letter lmms-eval's ``extract_mcq_answer`` reads from an answer, or "" for none."""
    if not response or not response.strip():
        return ""
    text = response.strip()
    for mark in ",.!?;:'\"":  # one after the other, as lmms-eval strips them
        text = text.strip(mark)
    text = f" {text} "
    found: list[tuple[int, int, str]] = []  # (rank, position, letter), in lmms-eval's order
    for kind, pattern in _MARKS:
        for letter in choices:
            mark = pattern.format(letter)
            if mark in text:
                found.append((_RANK[kind], text.rfind(mark), letter))
    lowered = text.lower()
    for phrase in ANSWER_PHRASES:
        at = lowered.find(phrase)
        if at < 0:
            continue
        for letter in choices:
            position = text.find(letter, at + len(phrase))
            if position >= 0:
                found.append((_RANK["phrase"], position, letter))
    bare = text.strip()
    for letter in choices:
        if bare.startswith(letter) and (len(bare) == 1 or not bare[1].isalpha()):
            found.append((_RANK["start"], 0, letter))
    for letter in choices:
        if bare.endswith(letter) and (len(bare) == 1 or not bare[-2].isalpha()):
            found.append((_RANK["end"], len(text) - 1, letter))
    if not found:
        found = [(_RANK["fallback"], text.rfind(letter), letter)
                 for letter in choices if letter in text]
    if not found:
        return ""
    # Highest rank, then the latest position; among equals the first found (a stable sort).
    best = max(range(len(found)), key=lambda index: (found[index][0], found[index][1],
                                                     -index))
    return found[best][2]


# --- MVBench's mcq_acc -------------------------------------------------------------------

_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
                "@", "`", ",", "?", "!")
_OPTION_LINE = re.compile(r"^([A-E])\.\s*(.+)$", re.IGNORECASE)
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")  # a full stop not before a digit
_SINGLE_LETTER = re.compile(r"\b([A-E])\b", re.IGNORECASE)


def mvbench_normal_form(answer: str) -> str:
    """What MVBench's ``mcq_acc`` compares: the letter of "B. text", else the first standalone
    A-E (any case) once punctuation is dropped, else the cleaned, lower-cased text."""
    option = _OPTION_LINE.match(answer.strip())
    if option:
        return option.group(1).upper()
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    spaced = text
    for mark in _PUNCTUATION:
        if f"{mark} " in text or f" {mark}" in text or _DIGIT_COMMA.search(text):
            spaced = spaced.replace(mark, "")
        else:
            spaced = spaced.replace(mark, " ")
    text = _PERIOD.sub("", spaced, count=32)  # lmms-eval passes re.UNICODE (32) as the count
    text = text.strip("'").strip('"').strip(")").strip("(").strip().lower()
    letter = _SINGLE_LETTER.search(text)
    return letter.group(1).upper() if letter else text


# --- LongVideoBench's parse_multi_choice_response ---------------------------------------------

LVB_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                "The best option is", "The correct option is", "Best answer:", "Best option:")
_LVB_LETTER = re.compile(r"[ABCDE]")


def lvb_letter(response: str, choices: str, seed: str) -> str:
    """LongVideoBench's parse: drop the answer prefixes, take the first capital A-E; with none
    (or a long answer without one) a random choice, seeded by ``seed``."""
    text = response.strip()
    for prefix in LVB_PREFIXES:
        text = text.replace(prefix, "")
    found = _LVB_LETTER.search(text)
    if found is None:
        return random.Random(seed).choice(choices)
    return found.group()


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
