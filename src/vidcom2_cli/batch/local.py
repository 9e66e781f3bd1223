"""The local batch runner: many questions, one model load, answered in batches on this machine.

The runner groups the items, hands the groups to the engine in one call and writes the records.
The engine decodes videos ahead on worker threads (``BatchOptions.prefetch``) while this
thread runs the model; the model itself is only ever called from this thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass

from ..engine import Engine
from ..errors import InputError
from ..options import (
    CompressionOptions,
    GenerationOptions,
    SamplingOptions,
    check_options,
    check_sampling,
)
from ..work import Question, Request, VideoQuestions
from .input import BatchItem
from .output import RecordOutput, RecordSink, pending_items, record
from .progress import BatchSummary


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
    (in order of their video's first question), else one group per item. The engine takes
    them all in one call (``Engine.answer_stream``): it decodes and preprocesses up to
    ``options.prefetch_items`` groups ahead on worker threads, encodes them one at a time on
    this thread and answers every ``batch_size`` encoded groups together; each group's records
    are written as soon as its batch is answered. Bad input becomes an error record and the
    run goes on; an error waits for the batch it falls in, so records keep the groups' order.
    Items may carry their own compression setting (``BatchItem.compression``, a sweep): a
    group is still encoded once.
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
    work = [VideoQuestions(_questions(group, options), group[0].error) for group in groups]
    with closing(engine.answer_stream(work, options.sampling, options.generation,
                                      options.batch_size, reuse_prefix=options.reuse,
                                      prefetch=options.prefetch_items)) as answered:
        for group, outcomes in zip(groups, answered, strict=True):
            output.add(group, [record(item, outcome)
                               for item, outcome in zip(group, outcomes, strict=True)])
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
