"""The errors a user is shown (one line naming the input and what is wrong), and turning
library exceptions into such lines."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type name when the message is empty.

    Library errors (transformers, decord, torch) often carry multi-line messages; every
    user-facing error here is one line.
    """
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class VideoError(ValueError):
    """A video cannot be read or sampled; the message names the file and the problem."""


class InputError(ValueError):
    """A request or option that cannot be run; the message names it and says why."""
