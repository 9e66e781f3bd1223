"""Many questions from a JSONL file, one model load: validate, encode, answer in batches, score.

Every input item ends up as one output line, an answer or an ``error`` record, so a run can
be resumed from its output alone (``--resume`` skips the ids already there). Lines
are written whole and flushed as soon as their batch is done: a killed run loses at most the
batch in flight and leaves at most a partial last line, which the resume scan cuts away.

Videos are decoded and preprocessed ahead on worker threads (``BatchOptions.prefetch``) while
the main thread runs the model; the model itself is only ever called from the main thread.
"""

from __future__ import annotations

import json
import os
import re
import string
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .engine import (
    Answer,
    CompressionOptions,
    EncodedRequest,
    Engine,
    GenerationOptions,
    InputError,
    PreparedRequest,
    Request,
    SamplingOptions,
    check_options,
    check_sampling,
)
from .errors import first_line
from .report import answer_to_json
from .timing import is_out_of_memory, release_cached_memory, reset_peak_memory
from .video import VideoError

MULTIPLE_CHOICE_PROMPT = "Answer with the option's letter from the given choices directly."
LETTERS = string.ascii_uppercase
FSYNC_EVERY = 8  # lines between fsyncs of a file output (and one at the end)
# Threads decoding ahead; their processor calls take turns (Engine's lock), decoding does not.
PREFETCH_WORKERS = 2

# An uppercase letter that is not part of a word: "B", "(B)", "B. blue", "answer is B."
_STANDALONE_LETTER = re.compile(r"(?<![A-Za-z])[A-Z](?![A-Za-z])")
# What follows "A" used as the article ("A red ball") or "I" as the pronoun ("I think", "I'm").
_USED_AS_WORD = re.compile(r"'|\s+[a-z]")


Part = TypeVar("Part")
Result = TypeVar("Result")


@dataclass(frozen=True)
class BatchOptions:
    sampling: SamplingOptions
    compression: CompressionOptions
    generation: GenerationOptions
    batch_size: int = 1  # encoded items per generate call
    # Items decoded and preprocessed ahead on CPU threads while the model runs; 0: none,
    # None: 2 x batch_size (the next batch ready when the current one ends, and one more).
    prefetch: int | None = None
    # Answer all the questions about one video from one encoding and one prefix prefill
    # (records grouped by video); False: every line on its own, in input order.
    reuse: bool = True

    @property
    def prefetch_items(self) -> int:
        return 2 * self.batch_size if self.prefetch is None else self.prefetch


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


@dataclass
class BatchSummary:
    """Tallies of one run, accumulated from the records it wrote."""

    total: int  # items in the input
    skipped: int = 0  # already in the output (--resume)
    processed: int = 0  # records written by this run, answers and errors
    errors: int = 0
    kept_ratio_sum: float = 0.0
    prefill_ms_sum: float = 0.0
    scored: int = 0  # answers that had an expected answer
    correct: int = 0

    @property
    def answered(self) -> int:
        return self.processed - self.errors

    def add(self, record: dict[str, Any]) -> None:
        self.processed += 1
        if "error" in record:
            self.errors += 1
            return
        self.kept_ratio_sum += record["kept_ratio"]
        self.prefill_ms_sum += record["timing_ms"]["prefill"]
        if "correct" in record:
            self.scored += 1
            self.correct += record["correct"]

    def as_dict(self) -> dict[str, Any]:
        answered = self.answered
        return {
            "items": self.total,
            "processed": self.processed,
            "answered": answered,
            "skipped": self.skipped,
            "errors": self.errors,
            "mean_kept_ratio": self.kept_ratio_sum / answered if answered else None,
            "mean_prefill_ms": self.prefill_ms_sum / answered if answered else None,
            "scored": self.scored,
            "correct": self.correct,
            "accuracy": self.correct / self.scored if self.scored else None,
        }

    def render(self) -> str:
        """Two or three plain lines for stderr."""
        errors = f"{self.errors} error" + ("" if self.errors == 1 else "s")
        lines = [f"{self.total} items: {self.processed} processed ({self.answered} answered, "
                 f"{errors}), {self.skipped} skipped (already in the output)"]
        if self.answered:
            values = self.as_dict()
            # Prefill is per generate call: items batched together report the same one.
            lines.append(f"mean kept ratio {values['mean_kept_ratio']:.3f}, "
                         f"mean prefill {values['mean_prefill_ms']:.1f} ms")
        if self.scored:
            lines.append(f"accuracy {self.correct}/{self.scored} = "
                         f"{100.0 * self.correct / self.scored:.1f}%")
        return "\n".join(lines)


def check_batch_options(options: BatchOptions) -> None:
    """InputError naming the option, before the model loads (a bad value would fail every item)."""
    check_options(options.compression, options.generation)
    if options.batch_size < 1:
        raise InputError(f"--batch-size: must be at least 1, got {options.batch_size}")
    if options.prefetch is not None and options.prefetch < 0:
        raise InputError(f"--prefetch: must be at least 0, got {options.prefetch}")
    check_sampling(options.sampling)


# --- input ---------------------------------------------------------------------------------

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


# --- multiple choice and scoring -----------------------------------------------------------

def multiple_choice_prompt(question: str, options: tuple[str, ...] | list[str]) -> str:
    """The lmms-eval multiple-choice layout: question, "A. ..." lines, then the instruction."""
    lines = [question.strip()]
    lines += [f"{letter}. {option}" for letter, option in zip(LETTERS, options, strict=False)]
    lines.append(MULTIPLE_CHOICE_PROMPT)
    return "\n".join(lines)


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: what free-text matching compares."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def expected_choice(expected: str, options: tuple[str, ...] | list[str]) -> str:
    """The letter an expected answer names: a letter in range, or an option's text."""
    letter = expected.strip().upper()
    if len(letter) == 1 and letter in LETTERS[:len(options)]:
        return letter
    for letter, option in zip(LETTERS, options, strict=False):
        if normalize(option) == normalize(expected):
            return letter
    raise ValueError(f"answer: {expected!r} is neither an option letter "
                     f"(A-{LETTERS[len(options) - 1]}) nor the text of an option")


def extract_choice(text: str, options: tuple[str, ...] | list[str]) -> str | None:
    """The option a model's answer picks, or None.

    The first standalone capital letter within the options' range ("B", "(B)", "B. blue",
    "The answer is B"), except "A" and "I" used as words ("A red ball", "I think"); with no
    such letter, the option whose text the answer is, or the only one whose text it contains.
    """
    last = LETTERS[len(options) - 1]
    for match in _STANDALONE_LETTER.finditer(text):
        letter = match.group()
        if letter > last or (letter in "AI" and _USED_AS_WORD.match(text, match.end())):
            continue
        return letter
    answer = normalize(text)
    texts = [normalize(option) for option in options]
    if answer in texts:
        return LETTERS[texts.index(answer)]
    contained = [index for index, option in enumerate(texts)
                 if re.search(rf"\b{re.escape(option)}\b", answer)]
    return LETTERS[contained[0]] if len(contained) == 1 else None


def is_correct(prediction: str, expected: str, options: tuple[str, ...] | list[str] | None
               ) -> bool:
    """Multiple choice: the picked letter is the expected one. Free text: equal once normalized."""
    if options is None:
        return normalize(prediction) == normalize(expected)
    return extract_choice(prediction, options) == expected_choice(expected, options)


# --- output --------------------------------------------------------------------------------

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


def error_record(item: BatchItem, error: str) -> dict[str, Any]:
    return {"id": item.id, "video": item.video, "question": item.question, "error": error}


def result_record(item: BatchItem, answer: Answer) -> dict[str, Any]:
    record = answer_to_json(answer)
    record["id"] = item.id  # as given: an integer id stays an integer
    if item.expected is not None:
        record["expected"] = item.expected
        record["correct"] = is_correct(answer.answer, str(item.expected), item.options)
    return record


# --- the run -------------------------------------------------------------------------------

def run_batch(engine: Engine, items: list[BatchItem], options: BatchOptions,
              writer: RecordSink, done: Mapping[str, int] | None = None,
              on_record: Callable[[BatchSummary], None] | None = None) -> BatchSummary:
    """Answer every item without a record in ``done`` (see ``pending_items``), writing one
    record per item.

    The work is split into groups: with ``options.reuse`` all the questions about one video
    (in order of their video's first question), else one group per item. Groups are decoded
    and preprocessed up to ``options.prefetch_items`` ahead on worker threads, then encoded
    one at a time on this thread; every ``batch_size`` encoded groups are answered together
    (see ``answer_groups`` and ``answer_batch``), and their records written as soon as they
    are. Bad input becomes an error record and the run goes on; an error waits for the batch
    it falls in, so records keep the groups' order. Items may carry their own compression
    setting (``BatchItem.compression``, a sweep): a group is then encoded once and compressed
    and prefilled once per setting (``answer_settings``).
    """
    engine.pixel_bounds(options.sampling)  # InputError for every item: refused at once
    engine.accept(options.compression)
    todo = pending_items(items, done or {})
    for setting, _ in _by_setting(todo, options):  # a sweep's: signals before any encoding
        engine.accept(setting)
    summary = BatchSummary(total=len(items), skipped=len(items) - len(todo))
    groups = video_groups(todo) if options.reuse else [[item] for item in todo]
    queue: list[tuple[list[BatchItem], EncodedRequest | str]] = []  # str: the group's error
    ready = 0  # encoded groups in the queue

    def flush() -> None:
        encoded = [(group, outcome) for group, outcome in queue
                   if isinstance(outcome, EncodedRequest)]
        if options.reuse:
            answered = iter(answer_settings(engine, encoded, options))
        else:
            answered = iter([record] for record in answer_batch(
                engine, [(group[0], outcome) for group, outcome in encoded], options))
        for group, outcome in queue:
            results = next(answered) if isinstance(outcome, EncodedRequest) else [
                error_record(item, outcome) for item in group]
            for result in results:
                writer.write(result)
                summary.add(result)
                if on_record is not None:
                    on_record(summary)
        queue.clear()

    with prepared_in_order(engine, groups, options.sampling, options.prefetch_items) as prepared:
        for group, outcome in prepared:
            if isinstance(outcome, str):
                queue.append((group, outcome))
                continue
            if ready == 0:
                reset_peak_memory(engine.devices)  # the peak reported is that of the item's batch
            encoded = encode_item(engine, outcome)
            if encoded is OUT_OF_MEMORY:  # answer the queued items, freeing their features
                flush()
                ready = 0
                reset_peak_memory(engine.devices)
                encoded = encode_item(engine, outcome, retry=False)
            queue.append((group, encoded))
            if isinstance(encoded, str):
                continue
            ready += 1
            if ready == options.batch_size:
                flush()
                ready = 0
    flush()
    return summary


def video_groups(items: list[BatchItem]) -> list[list[BatchItem]]:
    """The items grouped by video file, in order of each video's first item; an item that
    cannot run (its ``error``) is a group of its own."""
    groups: dict[str, list[BatchItem]] = {}
    alone: list[list[BatchItem]] = []
    order: list[list[BatchItem]] = []
    for item in items:
        if item.error is not None:
            alone.append([item])
            order.append(alone[-1])
            continue
        key = os.path.abspath(item.video)
        if key not in groups:
            groups[key] = []
            order.append(groups[key])
        groups[key].append(item)
    return order


def prepare_item(engine: Engine, item: BatchItem, sampling: SamplingOptions
                 ) -> PreparedRequest | str:
    """An item decoded and preprocessed, or its error (one line).

    An unexpected failure (a decoder or processor bug on one odd file) is the item's error
    too, named by its type, so that one file never stops the run or every later ``--resume``.
    """
    if item.error is not None:
        return item.error
    try:
        return engine.prepare(Request(item.video, item.prompt or "", item.key), sampling)
    except (InputError, VideoError, ValueError) as error:
        return first_line(error)
    except Exception as error:
        return f"{type(error).__name__}: {first_line(error)}"


OUT_OF_MEMORY = "out of memory"  # encode_item's answer when a retry may still succeed


def encode_item(engine: Engine, prepared: PreparedRequest, retry: bool = True
                ) -> EncodedRequest | str:
    """A prepared item through the vision encoder, or its error (one line).

    Running out of memory with ``retry`` gives ``OUT_OF_MEMORY``, so that the caller can free
    memory (answer the items queued before it) and try once more. Any other failure, and
    running out again, is the item's error and the run goes on: ending the run would stop every
    ``--resume`` at the same item.
    """
    try:
        return engine.encode_prepared(prepared)
    except (InputError, VideoError, ValueError) as error:
        return first_line(error)
    except Exception as error:
        failure = f"{type(error).__name__}: {first_line(error)}"
        out_of_memory = is_out_of_memory(error)
    if out_of_memory:  # outside the except block, so the failed call's tensors are freed
        release_cached_memory()
        if retry:
            return OUT_OF_MEMORY
    return failure


@contextmanager
def prepared_in_order(engine: Engine, groups: list[list[BatchItem]], sampling: SamplingOptions,
                      prefetch: int
                      ) -> Iterator[Iterator[tuple[list[BatchItem], PreparedRequest | str]]]:
    """The groups in order, each with the ``prepare_item`` outcome of its first item (the
    video and the processor's output are the same for every item of a group).

    With ``prefetch`` > 0, up to that many groups after the one handed out are being prepared
    on worker threads meanwhile; leaving the block (Ctrl-C included) cancels those not
    started. The one or two decodes already running finish on their threads (the interpreter
    joins them at exit, a few seconds at most). With 0, each is prepared here when asked for.
    """
    if prefetch == 0:
        yield ((group, prepare_item(engine, group[0], sampling)) for group in groups)
        return
    pool = ThreadPoolExecutor(max_workers=min(prefetch, PREFETCH_WORKERS),
                              thread_name_prefix="vidcom2-prefetch")
    try:
        yield _prefetched(pool, engine, groups, sampling, prefetch)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _prefetched(pool: ThreadPoolExecutor, engine: Engine, groups: list[list[BatchItem]],
                sampling: SamplingOptions, prefetch: int
                ) -> Iterator[tuple[list[BatchItem], PreparedRequest | str]]:
    pending: deque[tuple[list[BatchItem], Future[PreparedRequest | str]]] = deque()
    for group in groups:
        pending.append((group, pool.submit(prepare_item, engine, group[0], sampling)))
        if len(pending) > prefetch:
            head, future = pending.popleft()
            yield head, future.result()
    while pending:
        head, future = pending.popleft()
        yield head, future.result()


def answer_batch(engine: Engine, batch: list[tuple[BatchItem, EncodedRequest]],
                 options: BatchOptions) -> list[dict[str, Any]]:
    """One generate call for the batch; when it fails, each item alone before an error."""

    def answer(pairs: list[tuple[BatchItem, EncodedRequest]]) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = [{} for _ in pairs]
        for setting, rows in _by_setting([item for item, _ in pairs], options):
            answers = engine.answer([pairs[row][1] for row in rows], setting,
                                    options.generation)
            for row, answer in zip(rows, answers, strict=True):
                records[row] = result_record(pairs[row][0], answer)
        return records

    return together_or_alone(answer, batch, lambda pair, failure: error_record(pair[0], failure),
                             # each retried item reports its own peak
                             before_alone=lambda: reset_peak_memory(engine.devices))


def answer_groups(engine: Engine, batch: list[tuple[list[BatchItem], EncodedRequest]],
                  options: BatchOptions) -> list[list[dict[str, Any]]]:
    """Each group's records: the videos compressed and their prompt prefixes prefilled in one
    batch, then every question answered on a copy of its video's prefix, ``batch_size``
    questions per generate call.

    When the prefill fails, each video is tried alone before its questions become errors;
    when a generate call fails, each of its questions is tried alone before becoming an error.
    """

    def answer(pairs: list[tuple[list[BatchItem], EncodedRequest]]
               ) -> list[list[dict[str, Any]]]:
        contexts = [engine.context(encoded, group[0].compression or options.compression)
                    for group, encoded in pairs]
        prefix = engine.prefill(contexts)

        def ask(chunk: list[tuple[int, BatchItem]]) -> list[dict[str, Any]]:
            requests = [(row, Request(item.video, item.prompt or "", item.key))
                        for row, item in chunk]
            answers = engine.ask_contexts(contexts, prefix, requests, options.generation)
            return [result_record(item, answer)
                    for (_, item), answer in zip(chunk, answers, strict=True)]

        asked = [(row, item) for row, (group, _) in enumerate(pairs) for item in group]
        records = iter([record for start in range(0, len(asked), options.batch_size)
                        for record in together_or_alone(
                            ask, asked[start:start + options.batch_size],
                            lambda pair, failure: error_record(pair[1], failure))])
        return [[next(records) for _ in group] for group, _ in pairs]

    return together_or_alone(
        answer, batch, lambda pair, failure: [error_record(item, failure) for item in pair[0]],
        before_alone=lambda: reset_peak_memory(engine.devices))


def answer_settings(engine: Engine, batch: list[tuple[list[BatchItem], EncodedRequest]],
                    options: BatchOptions) -> list[list[dict[str, Any]]]:
    """``answer_groups`` where the items of a group may ask for several compression settings
    (``BatchItem.compression``): each video is compressed once per setting from its one
    encoding, ``batch_size`` (video, setting) contexts are prefilled at a time, and each group's
    records come back in its items' order."""
    if all(item.compression is None for group, _ in batch for item in group):
        return answer_groups(engine, batch, options)
    parts: list[tuple[int, list[int], list[BatchItem], EncodedRequest]] = []
    for index, (group, encoded) in enumerate(batch):
        for _, rows in _by_setting(group, options):
            parts.append((index, rows, [group[row] for row in rows], encoded))
    results: list[list[dict[str, Any]]] = [[{} for _ in group] for group, _ in batch]
    for start in range(0, len(parts), options.batch_size):
        chunk = parts[start:start + options.batch_size]
        answered = answer_groups(engine, [(items, encoded) for _, _, items, encoded in chunk],
                                 options)
        for (index, rows, _, _), records in zip(chunk, answered, strict=True):
            for row, record in zip(rows, records, strict=True):
                results[index][row] = record
    return results


def _by_setting(items: list[BatchItem], options: BatchOptions
                ) -> list[tuple[CompressionOptions, list[int]]]:
    """Each compression setting of the items with their positions, in order of first use
    (settings compared by value: their repr, as an option may hold an unhashable dict)."""
    settings: dict[str, tuple[CompressionOptions, list[int]]] = {}
    for row, item in enumerate(items):
        setting = item.compression or options.compression
        settings.setdefault(repr(setting), (setting, []))[1].append(row)
    return list(settings.values())


def together_or_alone(run: Callable[[list[Part]], list[Result]], parts: list[Part],
                      failed: Callable[[Part, str], Result],
                      before_alone: Callable[[], None] = lambda: None) -> list[Result]:
    """``run(parts)``, one result per part; when it fails, each part alone (``before_alone``
    called first), and a part that fails alone gets ``failed(part, message)``.

    After an out-of-memory error the cached CUDA memory is released, outside the ``except``
    block, so that the failed call's traceback (and the activations its frames hold) is gone.
    """
    if not parts:
        return []
    try:
        return run(parts)
    except Exception as error:
        failure, out_of_memory = _failure(error)
    if out_of_memory:
        release_cached_memory()
    if len(parts) == 1:
        return [failed(parts[0], failure)]
    results = []
    for part in parts:
        before_alone()
        results += together_or_alone(run, [part], failed, before_alone)
    return results


def _failure(error: Exception) -> tuple[str, bool]:
    """An error as its item's one-line message, and whether it means out of memory."""
    if isinstance(error, InputError):  # e.g. one prompt too long for the context
        return first_line(error), False
    return f"{type(error).__name__}: {first_line(error)}", is_out_of_memory(error)


@contextmanager
def progress_bar(console: Console, total: int | None
                 ) -> Iterator[Callable[[BatchSummary], None]]:
    """A progress bar with ETA on ``console``; yields the callback that advances it."""
    columns = (TextColumn("answering"), BarColumn(), MofNCompleteColumn(),
               TextColumn("errors: {task.fields[errors]}"), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("answering", total=total, errors=0)
        yield lambda summary: progress.update(task, completed=summary.processed,
                                              errors=summary.errors)
