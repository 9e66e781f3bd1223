"""The errors a user is shown (one line naming the input and what is wrong), and turning
library exceptions into such lines."""

from __future__ import annotations

from collections.abc import Iterable


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type name when the message is empty.

    Library errors (transformers, decord, torch) often carry multi-line messages; every
    user-facing error here is one line.
    """
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """" (did you mean 'x'?)" for the nearest of ``choices``, or "" when none is near."""
    from difflib import get_close_matches

    near = get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""


class VideoError(ValueError):
    """A video cannot be read or sampled; the message names the file and the problem."""


class InputError(ValueError):
    """A request or option that cannot be run; the message names it and says why."""


class ModelLoadError(ValueError):
    """The model reference or a load option is unusable; the message says which and why."""
