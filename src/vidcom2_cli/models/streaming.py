"""Text handed out while ``generate`` runs, and rows stopped on their own.

``TextStreamer`` passes a batch of one's new text to a callback as tokens arrive,
``RowStreamer`` does so for each row of a batch with its own callback, and ``RowStop`` ends a
row's generation when its own check says so (a client gone, a time limit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


class TextStreamer:
    """A ``generate`` streamer that hands the new text to a callback as tokens arrive.

    ``generate`` first puts the prompt, then each new token; text is decoded from all the
    answer's tokens so far (a token may end inside a multi-byte character, which waits for the
    next one), and nothing after a stop token is passed on.
    """

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None], stops: set[int]) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.stops = stops
        self.prompt_seen = False
        self.stopped = False
        self.tokens: list[int] = []
        self.sent = 0

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.stopped = self.stopped or token in self.stops
            if not self.stopped:
                self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()
        if text.endswith("\ufffd"):
            return
        if len(text) > self.sent:
            self.on_text(text[self.sent:])
            self.sent = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()
        if len(text) > self.sent:
            self.on_text(text[self.sent:])
            self.sent = len(text)


class RowStreamer:
    """A ``generate`` streamer for a batch: each row's text goes to its own callback (None: that
    row is not streamed), as ``TextStreamer`` does for a batch of one."""

    def __init__(self, tokenizer: Any, callbacks: Sequence[Callable[[str], None] | None],
                 stops: set[int]) -> None:
        self.rows = [None if callback is None else TextStreamer(tokenizer, callback, stops)
                     for callback in callbacks]
        for row in self.rows:
            if row is not None:
                row.prompt_seen = True  # the batch's prompt is skipped here, once
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        tokens = value.reshape(-1)
        for index, row in enumerate(self.rows):
            if row is not None:
                row.put(tokens[index:index + 1])

    def end(self) -> None:
        for row in self.rows:
            if row is not None:
                row.end()


class RowStop:
    """A stopping criterion asking each row's own check after every token (None: never)."""

    def __init__(self, checks: Sequence[Callable[[], bool] | None]) -> None:
        self.checks = list(checks)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
                 ) -> torch.Tensor:
        return torch.tensor([check is not None and bool(check()) for check in self.checks],
                            dtype=torch.bool, device=input_ids.device)
