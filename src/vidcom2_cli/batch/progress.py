"""How far a batch has come: the tallies of the records written, and the progress bar."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from ..wording import counted


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
        lines = [f"{counted(self.total, 'item')}: {self.processed:,} processed "
                 f"({self.answered:,} answered, {counted(self.errors, 'error')}), "
                 f"{self.skipped:,} skipped (already in the output)"]
        if self.answered:
            values = self.as_dict()
            # Prefill is per generate call: items batched together report the same one.
            lines.append(f"mean kept ratio {values['mean_kept_ratio']:.3f}, "
                         f"mean prefill {values['mean_prefill_ms']:.1f} ms")
        if self.scored:
            lines.append(f"accuracy {self.correct}/{self.scored} = "
                         f"{100.0 * self.correct / self.scored:.1f}%")
        return "\n".join(lines)


class AverageTimeRemainingColumn(ProgressColumn):
    """Time left at the run's average pace so far. rich's own estimate follows the last few
    updates, and a batch writes its records in bursts (a video's questions at once), so it
    read 0:00:01 with most items left."""

    def render(self, task: Task) -> Text:
        if not task.completed or task.total is None or task.elapsed is None:
            return Text("-:--:--", style="progress.remaining")
        left = (task.total - task.completed) * task.elapsed / task.completed
        return Text(str(timedelta(seconds=max(0, round(left)))), style="progress.remaining")


@contextmanager
def progress_bar(console: Console, total: int | None
                 ) -> Iterator[Callable[[BatchSummary], None]]:
    """A progress bar with ETA on ``console``; yields the callback that advances it."""
    columns = (TextColumn("answering"), BarColumn(), MofNCompleteColumn(),
               TextColumn("errors: {task.fields[errors]}"), TimeElapsedColumn(),
               TextColumn("ETA"), AverageTimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("answering", total=total, errors=0)
        yield lambda summary: progress.update(task, completed=summary.processed,
                                              errors=summary.errors)
