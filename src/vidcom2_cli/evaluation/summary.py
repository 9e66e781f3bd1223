"""The summary of an eval run: per task and per breakdown (Video-MME's durations, MVBench's
subtasks, MLVU's task types, LongVideoBench's duration groups and question categories), per
method and ratio.

Accuracy is over the answered questions that count (MVBench leaves empty answers out, as
lmms-eval does, and a subset whose every answer is empty scores 0 as there: ``... if
total_answered > 0 else 0``); errors are reported apart, and a subset with no answer at all
(every video missing) has no score. Rows come in the task's order: all, then each breakdown's
values in their natural order (``Task.orders``: short/medium/long, MVBench's subtasks as
lmms-eval's ``mvbench.yaml`` lists them, MLVU's task types as MLVU numbers them,
LongVideoBench's duration groups by length and its question categories alphabetically).

The task's score is that accuracy, except MLVU's (the mean of its task types' accuracies, as
lmms-eval's ``mlvu_aggregate_results_dev``; over the task types present, which is all 7 unless
``--limit`` cut some) and MVBench's (the mean of the subtasks' accuracies, the number the
papers report; lmms-eval prints only the 20). ``of_full`` is the score as a percentage of the
ratio-1.0 score of the same rows when 1.0 is in the sweep (the papers' "avg of full"). Time
per question is the end-to-end time of each record (a video's first question per setting
carries its decoding, encoding and prefix prefill, as it would alone), averaged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from . import TASKS

ALL = "all"


class _Tally:
    def __init__(self) -> None:
        self.questions = self.errors = self.counted = self.correct = 0
        self.tokens = self.prefill_ms = self.seconds = self.kv_attended = 0.0
        self.answered = 0
        # in-LLM stage name -> (sum of the visual tokens left after it, answers that ran it)
        self.stages: dict[str, tuple[float, int]] = {}

    def add(self, record: dict[str, Any]) -> None:
        self.questions += 1
        if "error" in record:
            self.errors += 1
            return
        self.answered += 1
        self.tokens += record["tokens"]["visual_kept"]
        llm = record["tokens"].get("llm")
        self.kv_attended += (record["tokens"]["visual_kept"] if llm is None
                             else llm["visual_kv_attended"])
        for stage in (llm or {}).get("stages", ()):
            total, count = self.stages.get(stage["stage"], (0.0, 0))
            self.stages[stage["stage"]] = (total + stage["visual"], count + 1)
        self.prefill_ms += record["timing_ms"]["prefill"]
        self.seconds += record["timing_ms"]["total"] / 1000.0
        if record.get("counted", True):
            self.counted += 1
            self.correct += bool(record.get("correct"))

    @property
    def accuracy(self) -> float | None:
        if self.counted:
            return 100.0 * self.correct / self.counted
        return 0.0 if self.answered else None  # answers, none of them counting: lmms-eval's 0

    def mean(self, total: float) -> float | None:
        return total / self.answered if self.answered else None

    def stage_means(self) -> dict[str, float]:
        """Per in-LLM stage, the mean visual tokens left after it (a decode stage: the visual
        KV entries a pruned step attends) over the answers that ran it."""
        return {name: total / count for name, (total, count) in self.stages.items()}


def summarize(records: Iterable[dict[str, Any]], task: str, order: list[str]) -> dict[str, Any]:
    """The summary as a JSON-ready dict; ``order``: the setting labels in sweep order."""
    breakdowns = TASKS[task].breakdowns
    tallies: dict[tuple[str, str], _Tally] = {}
    methods: dict[str, tuple[str, float]] = {}
    for record in records:
        setting = record["setting"]
        methods[setting] = (record["method"], float(record["ratio"]))
        groups = record.get("groups", {})
        for subset in (ALL, *(f"{name}={groups.get(name, '?')}" for name in breakdowns)):
            tallies.setdefault((subset, setting), _Tally()).add(record)
    subsets = sorted({subset for subset, _ in tallies}, key=lambda name: _rank(task, name))
    rows = []
    for subset in subsets:
        for setting in [label for label in order if label in methods]:
            tally = tallies.get((subset, setting))
            if tally is None:
                continue
            score = tally.accuracy
            if subset == ALL and TASKS[task].macro:
                parts = [tallies[(name, setting)].accuracy for name in subsets
                         if name.startswith(f"{breakdowns[0]}=") and (name, setting) in tallies]
                parts = [part for part in parts if part is not None]
                score = sum(parts) / len(parts) if parts else None
            method, ratio = methods[setting]
            rows.append({"task": task, "subset": subset, "method": method, "ratio": ratio,
                         "questions": tally.questions, "errors": tally.errors,
                         "counted": tally.counted, "correct": tally.correct,
                         "accuracy": tally.accuracy, "score": score,
                         "visual_tokens": tally.mean(tally.tokens),
                         # visual KV entries a decoding step attends per layer (in-LLM stages)
                         "visual_kv_attended": tally.mean(tally.kv_attended),
                         "llm_stages": tally.stage_means(),
                         "prefill_ms": tally.mean(tally.prefill_ms),
                         "seconds_per_question": tally.mean(tally.seconds)})
    for row in rows:
        row["of_full"] = _of_full(row, rows)
    return {"task": task,
            "score": f"mean over {breakdowns[0]}s" if TASKS[task].macro else "accuracy",
            "settings": [label for label in order if label in methods], "rows": rows}


def _rank(task: str, subset: str) -> tuple[int, int, float, str]:
    """Where a subset's rows go: all first, then the breakdowns in the task's order, each
    one's values in their natural order, then the unlisted ones (numbers by value), "?"
    last."""
    if subset == ALL:
        return (-1, 0, 0.0, "")
    name, _, value = subset.partition("=")
    breakdowns = TASKS[task].breakdowns
    position = breakdowns.index(name) if name in breakdowns else len(breakdowns)
    order = TASKS[task].orders.get(name, ())
    if value in order:
        return (position, order.index(value), 0.0, "")
    if value == "?":
        return (position, len(order) + 2, 0.0, "")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if math.isfinite(number):
        return (position, len(order), number, "")
    return (position, len(order) + 1, 0.0, value)


def _of_full(row: dict[str, Any], rows: list[dict[str, Any]]) -> float | None:
    full = [other for other in rows if other["subset"] == row["subset"]
            and other["ratio"] == 1.0]
    same = [other for other in full if other["method"] == row["method"]]
    base = (same or full or [None])[0]
    if base is None or not base["score"] or row["score"] is None:
        return None
    return 100.0 * row["score"] / base["score"]


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


EVAL_CAPTION = ("n = questions, err = errors (not scored), score = accuracy %, % full = "
                "score as % of R=1's, tokens = mean visual tokens sent, KV = mean visual KV "
                "entries a decoding step attends per layer (below tokens only where an in-LLM "
                "stage ran), prefill = mean prefill ms, s/q = seconds per question end to end")
STAGES_CAPTION = ("in-LLM stages, all questions: mean visual tokens left after a prefill stage "
                  "(merge@K, prune@K), or visual KV entries a pruned decoding step attends "
                  "(kv-prune@L)")
_COLUMNS = (("method", "left"), ("R", "right"), ("n", "right"), ("err", "right"),
            ("score", "right"), ("% full", "right"), ("tokens", "right"), ("KV", "right"),
            ("prefill", "right"), ("s/q", "right"))


def render(summary: dict[str, Any]) -> Group:
    """The summary in 80 columns: each subset's name on its own line (MVBench's subtask names
    are long), then its rows, in one column layout for all subsets."""
    cells = {id(row): _cells(row) for row in summary["rows"]}
    widths = [max([len(name)] + [len(cells[id(row)][index]) for row in summary["rows"]])
              for index, (name, _) in enumerate(_COLUMNS)]
    subsets = list(dict.fromkeys(row["subset"] for row in summary["rows"]))
    parts: list[RenderableType] = [Text(f"{summary['task']} ({summary['score']})",
                                        style="bold")]
    for number, subset in enumerate(subsets):
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0, 0, 1),
                      show_header=number == 0)
        for (name, justify), width in zip(_COLUMNS, widths, strict=True):
            table.add_column(name, justify=justify, no_wrap=True,  # type: ignore[arg-type]
                             min_width=width)
        for row in summary["rows"]:
            if row["subset"] == subset:
                table.add_row(*(Text(cell) for cell in cells[id(row)]))
        parts += [Text(subset, style="bold"), table]
    parts.append(Text(EVAL_CAPTION, style="dim"))
    staged = [row for row in summary["rows"] if row["subset"] == ALL and row.get("llm_stages")]
    if staged:
        parts.append(Text(STAGES_CAPTION, style="dim"))
        parts += [Text(f"  {row['method']} R={row['ratio']:g}: " + ", ".join(
            f"{name} {value:,.0f}" for name, value in row["llm_stages"].items()))
            for row in staged]
    return Group(*parts)


def _cells(row: dict[str, Any]) -> list[str]:
    return [row["method"], f"{row['ratio']:g}", str(row["questions"]), str(row["errors"]),
            _number(row["score"]), _number(row["of_full"]), _number(row["visual_tokens"], 0),
            _number(row.get("visual_kv_attended"), 0), _number(row["prefill_ms"]),
            _number(row["seconds_per_question"], 2)]
