"""A failed batch call tried again part by part, so that one bad part never costs the others.

Used by the engine for prefix prefills (each video alone) and generate calls (each question
alone); a part that fails on its own gets its error as a one-line message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .errors import InputError, first_line
from .timing import is_out_of_memory, release_cached_memory

Part = TypeVar("Part")
Outcome = TypeVar("Outcome")


def together_or_alone(run: Callable[[list[Part]], list[Outcome]], parts: list[Part],
                      failed: Callable[[Part, str], Outcome],
                      before_alone: Callable[[], None] = lambda: None) -> list[Outcome]:
    """``run(parts)``, one outcome per part; when it fails, each part alone (``before_alone``
    called first), and a part that fails alone gets ``failed(part, message)``.

    After an out-of-memory error the cached CUDA memory is released, outside the ``except``
    block, so that the failed call's traceback (and the activations its frames hold) is gone.
    """
    if not parts:
        return []
    try:
        return run(parts)
    except Exception as error:
        failure, out_of_memory = failure_message(error)
    if out_of_memory:
        release_cached_memory()
    if len(parts) == 1:
        return [failed(parts[0], failure)]
    outcomes = []
    for part in parts:
        before_alone()
        outcomes += together_or_alone(run, [part], failed, before_alone)
    return outcomes


def failure_message(error: Exception) -> tuple[str, bool]:
    """An error as its question's one-line message, and whether it means out of memory."""
    if isinstance(error, InputError):  # e.g. one prompt too long for the context
        return first_line(error), False
    return f"{type(error).__name__}: {first_line(error)}", is_out_of_memory(error)
