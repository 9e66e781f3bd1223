"""Reading a batch's JSONL input: one ``BatchItem`` per non-blank line, ready to run or carrying
the one-line error that stops it (bad JSON, a missing field, a repeated id, ...).

Relative video paths resolve against the input's folder; multiple-choice items get the
lettered prompt (``multiple_choice``). A file is read one line at a time, never whole.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, first_line
from ..multiple_choice import LETTERS, expected_choice, multiple_choice_prompt

if TYPE_CHECKING:  # torch: reading the input needs none
    from ..options import CompressionOptions


@dataclass(frozen=True)
class BatchItem:
    """One non-blank input line: a request ready to encode, or the error that stops it.

    ``id`` is the line's id as given (a string or an integer), or ``line-<n>`` when it has
    none; ``video`` is resolved against the input's folder; ``prompt`` is the question as
    asked, with the lettered options for multiple choice.
    """

    line: int
    id: str | int
    video: Any = None
    question: Any = None
    prompt: str | None = None
    options: tuple[str, ...] | None = None
    expected: str | int | None = None
    error: str | None = None
    # The ratio and method of this item's answer, when not the run's (``BatchOptions``): a
    # sweep asks one video's questions under several settings, from one encoding (``eval``).
    compression: CompressionOptions | None = None

    @property
    def key(self) -> str:
        """The id as compared for duplicates and resume (7 and "7" are the same id)."""
        return str(self.id)


def read_input(path: str) -> list[BatchItem]:
    """All items of a JSONL file, or of stdin for ``-``; InputError when it cannot be read.

    Relative video paths resolve against the file's folder (the current one for stdin).
    """
    return list(stream_input(path))


def stream_input(path: str) -> Iterator[BatchItem]:
    """The items of a JSONL file (or stdin for ``-``) one line at a time, so that a file of
    any size is never held in memory; the file is opened here (InputError if it cannot be),
    before the first item is asked for."""
    if path == "-":
        return iter_items(sys.stdin.buffer, Path())
    try:
        handle = Path(path).open("rb")  # noqa: SIM115 (closed by the generator below)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a JSONL file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None

    def items() -> Iterator[BatchItem]:
        with handle:
            yield from iter_items(handle, Path(path).parent)

    return items()


def count_lines(path: Path) -> int:
    """Non-blank lines of a file, read in blocks (for a progress bar's total)."""
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def parse_lines(data: bytes, base: Path) -> list[BatchItem]:
    """One item per non-blank line; a later line repeating an id becomes an error item."""
    return list(iter_items(data.splitlines(), base))


def iter_items(lines: Iterable[bytes], base: Path) -> Iterator[BatchItem]:
    """``parse_lines`` one line at a time (only the ids seen so far are remembered)."""
    first_seen: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        item = parse_line(raw, number, base)
        if item.key in first_seen:
            item = BatchItem(number, item.id, item.video, item.question,
                             error=f"duplicate id (first on line {first_seen[item.key]})")
        else:
            first_seen[item.key] = number
        yield item


def parse_line(raw: bytes, number: int, base: Path) -> BatchItem:
    try:
        record = json.loads(raw)
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8
        return BatchItem(number, f"line-{number}", error=f"line {number}: not valid JSON "
                         f"({first_line(error)})")
    if not isinstance(record, dict):
        return BatchItem(number, f"line-{number}",
                         error=f"line {number}: expected a JSON object, got {_json_type(record)}")
    raw_id = record.get("id")
    has_id = (isinstance(raw_id, int) and not isinstance(raw_id, bool)) or (
        isinstance(raw_id, str) and raw_id.strip() != "")
    item_id = raw_id if has_id else f"line-{number}"
    video = record.get("video")
    if isinstance(video, str) and video:
        video = str(base / Path(video).expanduser())
    question = record.get("question")
    try:
        if not has_id:
            raise ValueError("id: missing, or not a non-empty string or an integer")
        if not isinstance(video, str) or not video:
            raise ValueError("video: missing, or not a non-empty string")
        if not isinstance(question, str):
            raise ValueError("question: missing, or not a string")
        if not question.strip():
            raise ValueError("question: the question is empty")
        options = _options(record.get("options"))
        expected = record.get("answer")
        if expected is not None:
            if isinstance(expected, bool) or not isinstance(expected, str | int):
                raise ValueError(f"answer: expected a string, got {_json_type(expected)}")
            if options is not None:
                expected_choice(str(expected), options)
    except ValueError as error:
        return BatchItem(number, item_id, video, question, error=str(error))
    prompt = question if options is None else multiple_choice_prompt(question, options)
    return BatchItem(number, item_id, video, question, prompt, options, expected)


def _options(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or not 2 <= len(value) <= len(LETTERS)
            or not all(isinstance(option, str) and option.strip() for option in value)):
        raise ValueError(f"options: expected a list of 2 to {len(LETTERS)} non-empty strings")
    return tuple(option.strip() for option in value)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
