"""Where a batch's records go: the writer, the records themselves, and the bookkeeping that
lets ``--resume`` skip what an earlier run already wrote.

Every input item ends up as one output line, an answer or an ``error`` record, so a run can
be resumed from its output alone. Lines are written whole and flushed at once: a killed run
loses at most the batch in flight and leaves at most a partial last line, which the resume
scan cuts away.
"""

from __future__ import annotations

import heapq
import json
import os
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InputError
from ..multiple_choice import is_correct
from .input import BatchItem
from .progress import BatchSummary

if TYPE_CHECKING:  # torch: checking --out and resuming need none
    from ..work import Answer

FSYNC_EVERY = 8  # lines between fsyncs of a file output (and one at the end)


def existing_ids(path: Path) -> Counter[str]:
    """How many complete records of an earlier output carry each id; cuts away a partial last
    line.

    A line without its newline is the remains of a killed write: the item is answered again.
    Ids are counted, not just collected, because a repeated input id has a record of its own
    (its error) that may still be missing.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Counter()
    except OSError as error:
        raise InputError(f"--out: cannot read {path} ({error.strerror or error})") from None
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        os.truncate(path, complete)
    ids: Counter[str] = Counter()
    for line in data[:complete].splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "id" in record:
            ids[str(record["id"])] += 1
    return ids


def pending_items(items: list[BatchItem], done: Mapping[str, int]) -> list[BatchItem]:
    """The items still without a record: each record in ``done`` accounts for one item with
    its id, the earliest first."""
    return list(iter_pending(items, done))


def iter_pending(items: Iterable[BatchItem], done: Mapping[str, int]) -> Iterator[BatchItem]:
    """``pending_items`` one item at a time."""
    unclaimed = Counter(done)
    for item in items:
        if unclaimed[item.key] > 0:
            unclaimed[item.key] -= 1
        else:
            yield item


def prepare_output(out: str, resume: bool, input_path: str) -> Counter[str]:
    """Check the output before the model loads; returns the records already there, by id.

    Without ``resume`` an existing non-empty file is refused rather than overwritten.
    """
    if out == "-":
        if resume:
            raise InputError("--resume: needs --out to be a file, not -")
        return Counter()
    path = Path(out)
    if path.is_dir():
        raise InputError(f"--out: {out} is a directory")
    if not path.parent.is_dir():
        raise InputError(f"--out: folder {path.parent} does not exist")
    if input_path != "-" and path.exists() and path.samefile(input_path):
        raise InputError("--out: is the input file")
    if resume:
        return existing_ids(path)
    if path.exists() and path.stat().st_size > 0:
        raise InputError(f"--out: {out} exists and is not empty; pass --resume to continue it, "
                         "or remove it")
    return Counter()


class RecordSink(Protocol):
    """Where ``run_batch`` puts each record: a ``ResultWriter``, or a list on a Ray worker."""

    def write(self, record: dict[str, Any]) -> None: ...


class ResultWriter:
    """Appends JSON lines to a file (or stdout), each in one write, flushed at once.

    A file is opened unbuffered in append mode so that a line reaches the kernel in a single
    ``write``, and fsync'd every ``FSYNC_EVERY`` lines and on close.
    """

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.unsynced = 0

    @classmethod
    @contextmanager
    def open(cls, out: str) -> Iterator[ResultWriter]:
        if out == "-":
            yield cls(None)
            return
        try:
            fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as error:
            raise InputError(f"--out: cannot open {out} ({error.strerror or error})") from None
        writer = cls(fd)
        try:
            yield writer
        finally:
            os.fsync(fd)
            os.close(fd)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        if self.fd is None:
            sys.stdout.write(line)
            sys.stdout.flush()
            return
        data = line.encode()
        while data:  # a regular file takes it in one write; a short write is finished here
            data = data[os.write(self.fd, data):]
        self.unsynced += 1
        if self.unsynced >= FSYNC_EVERY:
            os.fsync(self.fd)
            self.unsynced = 0


def record(item: BatchItem, outcome: Answer | str) -> dict[str, Any]:
    """An item's output line: its answer (scored when it has an expected answer), or its
    error."""
    if isinstance(outcome, str):
        return error_record(item, outcome)
    from ..report import answer_to_json  # here: the report imports torch, the checks need none

    answered = answer_to_json(outcome)
    answered["id"] = item.id  # as given: an integer id stays an integer
    if item.expected is not None:
        answered["expected"] = item.expected
        answered["correct"] = is_correct(outcome.answer, str(item.expected), item.options)
    return answered


def error_record(item: BatchItem, error: str) -> dict[str, Any]:
    return {"id": item.id, "video": item.video, "question": item.question, "error": error}


class RecordOutput:
    """A run's records on their way out: each written to the sink, counted into the summary
    and announced to ``on_record``.

    Records are written as they are added, or with ``ordered`` in input order: then the
    records of a finished chunk wait for those of every earlier line handed out (``expect``),
    which Ray's workers return in any order.
    """

    def __init__(self, writer: RecordSink, summary: BatchSummary,
                 on_record: Callable[[BatchSummary], None] | None = None,
                 ordered: bool = False) -> None:
        self.writer, self.summary, self.on_record, self.ordered = (writer, summary, on_record,
                                                                  ordered)
        self.expected: list[int] = []  # heap of the lines handed out, not yet written
        self.waiting: dict[int, dict[str, Any]] = {}  # line -> finished record

    def expect(self, items: list[BatchItem]) -> None:
        if self.ordered:
            for item in items:
                heapq.heappush(self.expected, item.line)

    def add(self, items: list[BatchItem], records: list[dict[str, Any]]) -> None:
        if not self.ordered:
            for record in records:
                self._write(record)
            return
        lines: dict[str, deque[int]] = {}
        for item in sorted(items, key=lambda item: item.line):
            lines.setdefault(item.key, deque()).append(item.line)
        for record in records:  # a repeated id's records come in its lines' order
            self.waiting[lines[str(record["id"])].popleft()] = record
        while self.expected and self.expected[0] in self.waiting:
            self._write(self.waiting.pop(heapq.heappop(self.expected)))

    def failed(self, items: list[BatchItem], message: str) -> None:
        self.add(items, [error_record(item, message) for item in items])

    def _write(self, record: dict[str, Any]) -> None:
        self.writer.write(record)
        self.summary.add(record)
        if self.on_record is not None:
            self.on_record(self.summary)
