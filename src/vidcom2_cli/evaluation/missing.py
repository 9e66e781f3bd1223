"""The videos a task's questions name but DIR lacks, said in one line a person can read.

Each such question becomes an error record (``video not found: PATH``) and the run goes on;
the batch summary only counts errors, so the eval command says once which videos they are:
the count, then as many of their paths (relative to DIR) as fit the line whole, then where the
rest are listed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .common import MISSING_VIDEO, EvalQuestion


def missing_videos(questions: Iterable[EvalQuestion]) -> dict[str, int]:
    """Each missing video (its path as the questions name it) and how many questions ask
    about it, in the questions' order."""
    counts: dict[str, int] = {}
    for question in questions:
        if question.error is not None and question.error.startswith(MISSING_VIDEO):
            counts[question.video] = counts.get(question.video, 0) + 1
    return counts


def _shown(video: str, root: Path) -> str:
    try:
        return str(Path(video).relative_to(root))
    except ValueError:
        return video


def missing_videos_line(questions: Iterable[EvalQuestion], root: Path, out: str,
                        width: int = 80) -> str | None:
    """One line (at most ``width`` columns where the paths allow) naming the videos DIR
    lacks, or None when none is missing, e.g. ``15 videos not found (40 questions):
    data/a.mp4, data/b.mp4, +13 more in mme.jsonl``. A path is never cut: those that do not
    fit are counted instead, and found in the ``--out`` file's error records."""
    counts = missing_videos(questions)
    if not counts:
        return None
    videos, asked = len(counts), sum(counts.values())
    head = (f"{videos} video{'s' if videos != 1 else ''} not found ({asked} "
            f"question{'s' if asked != 1 else ''})")
    listed = "the error records" if out == "-" else out
    names = [_shown(video, root) for video in counts]
    for shown in range(len(names), 0, -1):
        rest = videos - shown
        line = f"{head}: {', '.join(names[:shown])}"
        if rest:
            line += f", +{rest} more in {listed}"
        if len(line) <= width:
            return line
    return f"{head}, listed in {listed}"
