"""A sweep of methods x ratios as batch items, and the records they give scored per task.

Every question is asked once per setting; all of them go through one ``run_batch``, which
groups the items by video, so that each video is decoded and encoded once for the whole sweep
and compressed once per setting (``BatchItem.compression``). Ratio 1.0 keeps every token
whatever the method, so it is asked once, under the first method.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from ..batch.input import BatchItem
from ..batch.output import RecordSink
from ..bench import method_shares
from ..options import CompressionOptions
from . import score
from .common import EvalQuestion


@dataclass(frozen=True)
class Setting:
    method: str
    ratio: float
    options: tuple[tuple[str, float], ...] = ()  # --method-option values this method has

    @property
    def label(self) -> str:
        return f"{self.method}@{self.ratio:g}"


def settings(ratios: Iterable[float], methods: Iterable[str]) -> list[Setting]:
    """Every (method, ratio), ratio 1.0 once (under the first method), in the order given."""
    methods = list(dict.fromkeys(methods))
    chosen: list[Setting] = []
    for ratio in dict.fromkeys(ratios):
        for method in (methods[:1] if ratio == 1.0 else methods):
            chosen.append(Setting(method, ratio))
    return chosen


def with_method_options(chosen: list[Setting], values: tuple[tuple[str, float], ...]
                        ) -> list[Setting]:
    """Each setting with its method's share of the ``--method-option`` values (bench's rule,
    ``bench.method_shares``: an option applies to every method that has it)."""
    if not values:
        return chosen
    shares = method_shares([setting.method for setting in chosen], values)
    return [replace(setting, options=shares[setting.method]) for setting in chosen]


def record_id(question: EvalQuestion, setting: Setting) -> str:
    return f"{question.task}/{question.id}|{setting.label}"


def sweep_items(questions: list[EvalQuestion], chosen: list[Setting], seed: int = 0
                ) -> tuple[list[BatchItem], dict[str, tuple[EvalQuestion, Setting]]]:
    """The batch items (each question under each setting) and what each item id stands for."""
    items: list[BatchItem] = []
    index: dict[str, tuple[EvalQuestion, Setting]] = {}
    for question in questions:
        for setting in chosen:
            key = record_id(question, setting)
            index[key] = (question, setting)
            items.append(BatchItem(
                line=len(items) + 1, id=key, video=question.video, question=question.prompt,
                prompt=question.prompt, error=question.error,
                compression=CompressionOptions(ratio=setting.ratio, method=setting.method,
                                               seed=seed, method_options=setting.options)))
    return items, index


def scored(record: dict[str, Any], question: EvalQuestion, setting: Setting) -> dict[str, Any]:
    """A batch record with the task's fields: the question id, its breakdown, the setting,
    the expected letter and, for an answer, the letter read and whether it is right."""
    extra: dict[str, Any] = {"task": question.task, "question_id": question.id,
                             "groups": question.groups, "setting": setting.label,
                             "expected": question.answer}
    out = {**record, **extra}
    out.setdefault("method", setting.method)
    out.setdefault("ratio", setting.ratio)
    if "error" not in record:
        read, correct, counted = score(question, record["answer"])
        out.update(pred=read, correct=correct, counted=counted)
    return out


class ScoringSink:
    """A ``RecordSink`` that scores each record before passing it on (and keeps them)."""

    def __init__(self, inner: RecordSink, index: dict[str, tuple[EvalQuestion, Setting]]
                 ) -> None:
        self.inner, self.index = inner, index
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        question, setting = self.index[str(record["id"])]
        record = scored(record, question, setting)
        self.records.append(record)
        self.inner.write(record)
