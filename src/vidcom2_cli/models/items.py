"""What passes between an adapter's steps: a prepared prompt, the encoder's output, a compressed
prompt, a prefilled prefix, a generate call's result.

They carry tensors, not behaviour: ``base.VideoAdapter`` makes and reads them, and the engine
hands them from one step to the next.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..compression import InLLMStage, VisionSignals
from ..timing import GenerationTiming
from .loop_state import LLMTokens, PendingLayers

# What receives generated text: one callback for a batch of one, or one per item (None: that
# item is not streamed).
TextCallbacks = Callable[[str], None] | Sequence[Callable[[str], None] | None] | None


class QuestionError(ValueError):
    """A question the model cannot be asked as text."""


@dataclass
class PreparedItem:
    """One (video, question) after the processor, batch dimension 1: on the CPU after
    ``preprocess``, on the model's device after ``to_device`` (but the token mask, which is
    only read on the host, stays on the CPU)."""

    inputs: dict[str, torch.Tensor]
    video_token_mask: torch.Tensor  # (L,) True at video placeholder tokens, on the CPU
    positions: torch.Tensor  # (P, L) positions of the uncompressed sequence

    @property
    def length(self) -> int:
        return int(self.inputs["input_ids"].shape[1])

    @property
    def has_pixels(self) -> bool:
        return any(key.startswith("pixel_values") for key in self.inputs)

    def without_pixels(self) -> PreparedItem:
        """The item less its pixels, which nothing reads after the vision encoder: an item
        waiting for its batch's ``generate`` then holds only token ids and features."""
        inputs = {key: value for key, value in self.inputs.items()
                  if not key.startswith("pixel_values")}
        return PreparedItem(inputs, self.video_token_mask, self.positions)


@dataclass
class EncodedVideo:
    """The vision encoder's output for one video and the layout the compressor scores."""

    features: torch.Tensor  # (T units, N tokens per unit in raster order, D)
    grid: tuple[int, int]  # (h, w) of the token grid of one unit
    output: Any  # what the model takes as mm_encoder_outputs["video"]
    signals: VisionSignals | None = None  # read from the tower when a method asked for them


@dataclass
class CompressedItem:
    """One item with a plan applied: 1-D sequences and positions of the kept tokens."""

    input_ids: torch.Tensor  # (L',)
    mm_token_type_ids: torch.Tensor | None  # (L',)
    position_ids: torch.Tensor  # (P, L'): P rows of positions (1 for LLaVA, 3 for Qwen M-RoPE)
    output: Any
    full_length: int
    stages: tuple[InLLMStage, ...] = ()  # the plan's stages inside the language model

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class PrefixCache:
    """The language model's cache after one prefill of the compressed prompt prefixes (system
    turn and video, up to the question) of one or more videos, left-padded into one batch.

    Every question about those videos is answered on a copy of it, so the video tokens are
    prefilled once whatever the number of questions.
    """

    cache: Any
    lengths: list[int]  # kept prefix tokens of each video (row)
    prefill_ms: float
    # with an in-LLM prefill stage: the prefix ran only the layers before it (the stage reads
    # the question's last token); what enters that layer waits here for the question
    pending: PendingLayers | None = None
    # prefixes whose plans run different in-LLM stages cannot share one run of the language
    # model: each such set of rows is a prefix cache of its own (``cache`` is then None)
    parts: list[tuple[list[int], PrefixCache]] | None = None

    @property
    def width(self) -> int:
        return max(self.lengths)

    def part_of(self, row: int) -> tuple[int, int]:
        """The part holding ``row`` and the row's place in it ((0, row) without parts)."""
        for index, (rows, _) in enumerate(self.parts or ()):
            if row in rows:
                return index, rows.index(row)
        return 0, row


@dataclass(frozen=True)
class GenerationResult:
    """Generated text and token ids for each item of a batch, and the batch's timing."""

    texts: list[str]
    token_ids: list[list[int]]
    timing: GenerationTiming
    prompt_lengths: list[int]
    # per item, what the language model held of its visual tokens; None without in-LLM stages
    llm_tokens: list[LLMTokens | None] | None = None
