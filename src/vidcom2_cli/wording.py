"""Wording shared by the messages and reports a person reads."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``1 entry``, ``2 entries``: a count with its noun in the right number."""
    if count == 1:
        return f"{count:,} {noun}"
    return f"{count:,} {plural or noun + 's'}"
