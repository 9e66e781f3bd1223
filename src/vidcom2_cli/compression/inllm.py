"""In-LLM stages: what a method does to the visual tokens inside the language model.

A stage acts at the input of one decoder layer ``layer`` and reads the attention that layer
``layer - 1`` computed (mean over heads) for the last query token:
- a ``PrefillStage`` acts once, in the forward pass that ends with the prompt's last token: it
  gets the visual tokens' hidden states entering ``layer`` and the attention the last prompt
  token paid them at ``layer - 1``, and returns which of them layers >= ``layer`` keep (at their
  original positions) and the kept ones' new hidden states (HoliTom's merge, FastV's drop);
- a ``DecodeStage`` acts at every decoding step (one new token): it gets the attention the new
  token paid the cached visual entries at ``layer - 1`` and the previous step's, and returns
  which of them layers >= ``layer`` attend at this step (DyCoke's KV pruning). The cache keeps
  every entry.

Stages see tensors of one sequence, never a model: the decoder loop that calls them lives in
``models.decoder_loop``. A stage is frozen data, so one plan can drive any number of calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class VisualSpan:
    """The visual tokens of one sequence entering a prefill stage's layer, in sequence order."""

    hidden: torch.Tensor  # (n, D) hidden states entering the stage's layer
    attention: torch.Tensor  # (n,) attention from the last prompt token at the layer before


@dataclass(frozen=True)
class SpanReduction:
    """What layers from the stage's layer on hold of a span: ``kept`` (ascending indices into
    the span) with ``hidden`` as their new hidden states."""

    kept: torch.Tensor  # (m,) int64, ascending
    hidden: torch.Tensor  # (m, D)


@dataclass(frozen=True)
class InLLMStage(ABC):
    """A stage at the input of decoder layer ``layer`` (0-based; it reads layer - 1)."""

    layer: int

    @property
    @abstractmethod
    def name(self) -> str:
        """A short label for reports, e.g. ``merge@18``."""


@dataclass(frozen=True)
class PrefillStage(InLLMStage):
    @abstractmethod
    def reduce(self, span: VisualSpan) -> SpanReduction:
        """The span's tokens layers >= ``layer`` keep, and their hidden states."""


@dataclass(frozen=True)
class DecodeStage(InLLMStage):
    @abstractmethod
    def attend(self, attention: torch.Tensor, previous: torch.Tensor | None
               ) -> torch.Tensor | None:
        """Ascending indices of the cached visual entries layers >= ``layer`` attend at this
        step, or None for all of them. ``attention`` (n,) is this step's attention from the new
        token at ``layer - 1``; ``previous`` the last step's (None at the first step)."""


def check_stages(stages: tuple[InLLMStage, ...]) -> None:
    """ValueError unless every stage acts at layer 1 or later (it reads the layer before), the
    prefill stages at distinct layers, and at most one decode stage, after every prefill stage
    (its layers then share one set of cached tokens)."""
    for stage in stages:
        if stage.layer < 1:
            raise ValueError(f"in-LLM stage {stage.name} must act at layer 1 or later")
    layers = [stage.layer for stage in stages if isinstance(stage, PrefillStage)]
    if len(set(layers)) != len(layers):
        raise ValueError("two in-LLM prefill stages act at the same layer")
    decode = [stage for stage in stages if isinstance(stage, DecodeStage)]
    if len(decode) > 1:
        raise ValueError("at most one in-LLM decode stage")
    if decode and any(layer >= decode[0].layer for layer in layers):
        raise ValueError(f"in-LLM decode stage {decode[0].name} must act after every prefill "
                         "stage")
