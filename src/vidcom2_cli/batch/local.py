"""The local batch runner: many questions, one model load, answered in batches on this machine.

Videos are decoded and preprocessed ahead on worker threads (``BatchOptions.prefetch``) while
the main thread runs the model; the model itself is only ever called from the main thread.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from ..engine import Engine
from ..errors import InputError, first_line
from ..options import (
    CompressionOptions,
    GenerationOptions,
    SamplingOptions,
    check_options,
    check_sampling,
)
from ..timing import is_out_of_memory, release_cached_memory, reset_peak_memory
from ..video import VideoError
from ..work import EncodedRequest, PreparedRequest, Question, QuestionGroup, Request
from .input import BatchItem
from .output import RecordOutput, RecordSink, pending_items, record
from .progress import BatchSummary

# Threads decoding ahead; their processor calls take turns (Engine's lock), decoding does not.
PREFETCH_WORKERS = 2


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


def check_batch_options(options: BatchOptions) -> None:
    """InputError naming the option, before the model loads (a bad value would fail every item)."""
    check_options(options.compression, options.generation)
    if options.batch_size < 1:
        raise InputError(f"--batch-size: must be at least 1, got {options.batch_size}")
    if options.prefetch is not None and options.prefetch < 0:
        raise InputError(f"--prefetch: must be at least 0, got {options.prefetch}")
    check_sampling(options.sampling)


def run_batch(engine: Engine, items: list[BatchItem], options: BatchOptions,
              writer: RecordSink, done: Mapping[str, int] | None = None,
              on_record: Callable[[BatchSummary], None] | None = None) -> BatchSummary:
    """Answer every item without a record in ``done`` (see ``pending_items``), writing one
    record per item.

    The work is split into groups: with ``options.reuse`` all the questions about one video
    (in order of their video's first question), else one group per item. Groups are decoded
    and preprocessed up to ``options.prefetch_items`` ahead on worker threads, then encoded
    one at a time on this thread; every ``batch_size`` encoded groups are handed to the engine
    together (``Engine.answer_groups``), and their records written as soon as they are
    answered. Bad input becomes an error record and the run goes on; an error waits for the
    batch it falls in, so records keep the groups' order. Items may carry their own
    compression setting (``BatchItem.compression``, a sweep): a group is still encoded once.
    """
    engine.pixel_bounds(options.sampling)  # InputError for every item: refused at once
    engine.accept(options.compression)
    todo = pending_items(items, done or {})
    settings = {repr(setting): setting for setting in (_setting(item, options) for item in todo)}
    for setting in settings.values():  # a sweep's: signals before any encoding
        engine.accept(setting)
    summary = BatchSummary(total=len(items), skipped=len(items) - len(todo))
    output = RecordOutput(writer, summary, on_record)
    groups = video_groups(todo) if options.reuse else [[item] for item in todo]
    queue: list[tuple[list[BatchItem], EncodedRequest | str]] = []  # str: the group's error
    ready = 0  # encoded groups in the queue

    def flush() -> None:
        work = [QuestionGroup(video, _questions(group, options)) for group, video in queue
                if isinstance(video, EncodedRequest)]
        answered = iter(engine.answer_groups(work, options.generation, options.batch_size,
                                             reuse_prefix=options.reuse))
        for group, video in queue:
            outcomes = next(answered) if isinstance(video, EncodedRequest) else [video] * len(group)
            output.add(group, [record(item, outcome)
                               for item, outcome in zip(group, outcomes, strict=True)])
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


def _questions(group: list[BatchItem], options: BatchOptions) -> tuple[Question, ...]:
    return tuple(Question(_request(item), _setting(item, options)) for item in group)


def _request(item: BatchItem) -> Request:
    """The engine's request for an item: its video, its prompt, its id."""
    return Request(item.video, item.prompt or "", item.key)


def _setting(item: BatchItem, options: BatchOptions) -> CompressionOptions:
    """The compression an item is answered under: its own (a sweep's), else the run's."""
    return item.compression or options.compression


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
        return engine.prepare(_request(item), sampling)
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
