"""What the layer-by-layer decoder loop keeps for one call, and what it reports per answer.

``LayerSequence`` is what a group of layers holds of the prompt (its columns, rotary parts
and positions, per left-padded row); ``PendingLayers`` a prefix stopped before its first
prefill stage; ``LoopCall`` one generate call's stages, layout and per-row counts, which it
turns into ``LLMTokens`` (the visual tokens each stage left and the KV sizes decoding used).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..compression.inllm import DecodeStage, InLLMStage, PrefillStage


@dataclass
class LayerSequence:
    """What one group of layers holds of the prompt, per row (left-padded)."""

    hidden: torch.Tensor | None  # (B, n, D), None once the group's layers have run
    columns: torch.Tensor  # (B, n) int64 prompt columns (0 at padding)
    valid: torch.Tensor  # (B, n) bool
    rotary: tuple[torch.Tensor, ...] | None  # the rotary module's (cos, sin), (B, n, d) each
    positions: torch.Tensor | None  # (B, n) positions the layers receive as position_ids

    def select(self, index: torch.Tensor, valid: torch.Tensor) -> LayerSequence:
        """Rows gathered at ``index`` (B, m) (a left-padded index, ``valid`` where real)."""
        def take(tensor: torch.Tensor | None) -> torch.Tensor | None:
            if tensor is None:
                return None
            expanded = index.reshape(*index.shape, *([1] * (tensor.dim() - 2)))
            return tensor.gather(1, expanded.expand(*index.shape, *tensor.shape[2:]))
        return LayerSequence(hidden=take(self.hidden), columns=take(self.columns).masked_fill(
                             ~valid, 0), valid=valid,
                         rotary=None if self.rotary is None else tuple(
                             take(part) for part in self.rotary),
                         positions=take(self.positions))

    @staticmethod
    def cat(first: LayerSequence, second: LayerSequence) -> LayerSequence:
        def join(a: Any, b: Any) -> Any:
            return None if a is None else torch.cat([a, b], dim=1)
        return LayerSequence(hidden=join(first.hidden, second.hidden),
                         columns=join(first.columns, second.columns),
                         valid=join(first.valid, second.valid),
                         rotary=None if first.rotary is None else tuple(
                             torch.cat([a, b], dim=1) for a, b in zip(first.rotary,
                                                                      second.rotary,
                                                                      strict=True)),
                         positions=join(first.positions, second.positions))

    def rows(self, index: torch.Tensor) -> LayerSequence:
        """The sequence for batch rows ``index`` (a prefix reused by several questions)."""
        def pick(tensor: Any) -> Any:
            return None if tensor is None else tensor.index_select(0, index.to(tensor.device))
        return LayerSequence(pick(self.hidden), pick(self.columns), pick(self.valid),
                         None if self.rotary is None else tuple(pick(t) for t in self.rotary),
                         pick(self.positions))


@dataclass
class PendingLayers:
    """A prompt prefix that ran through the layers before the first prefill stage only: what
    enters that stage's layer, kept until the question (whose last token the stage reads)
    arrives. Layers from there on have nothing cached for the prefix yet."""

    sequence: LayerSequence
    layer: int

    def rows(self, index: torch.Tensor) -> PendingLayers:
        return PendingLayers(self.sequence.rows(index), self.layer)


@dataclass(frozen=True)
class StageTokens:
    """One stage's effect on one answer's visual tokens."""

    stage: str
    layer: int
    visual: float  # tokens left after a prefill stage / mean entries kept on pruned steps
    steps: int | None = None  # decode stage: decoding steps
    pruned_steps: int | None = None  # decode stage: steps that attended a subset


@dataclass(frozen=True)
class LLMTokens:
    """What the language model held of one answer's visual tokens."""

    stages: tuple[StageTokens, ...]
    visual_kv_cached: float  # visual KV entries per layer once the answer is done (mean)
    visual_kv_attended: float  # visual KV entries a decoding step attends (mean, layers x steps)


@dataclass
class _RowCounts:
    prefill: dict[int, int] = field(default_factory=dict)  # stage layer -> visual kept
    attended: list[float] = field(default_factory=list)  # per step, mean over the layers
    kept: list[int | None] = field(default_factory=list)  # per step: decode stage's, or None


@dataclass
class LoopCall:
    """One call's stages and prompt layout: ``visual`` (B, W) True at the collated prompt's
    visual columns. ``stop_before``: run only the layers before it (a prefix prefill; what
    enters it is kept as ``pending``). ``pending``: such a prefix, continued by this call."""

    stages: tuple[InLLMStage, ...]
    visual: torch.Tensor
    stop_before: int | None = None
    pending: PendingLayers | None = None
    groups: list[tuple[int, LayerSequence]] = field(default_factory=list)
    previous: list[torch.Tensor | None] = field(default_factory=list)
    counts: list[_RowCounts] = field(default_factory=list)

    def __post_init__(self) -> None:
        rows = self.visual.shape[0]
        self.previous = [None] * rows
        self.counts = [_RowCounts() for _ in range(rows)]

    @property
    def width(self) -> int:
        return self.visual.shape[1]

    def report(self, layers: int, generated: list[int]) -> list[LLMTokens]:
        """Per row: visual tokens after each stage and the decoding KV sizes, over the
        decoding steps that fed the row's ``generated`` tokens (a row that stopped early
        rides along the batch's later steps; those do not count)."""
        reports = []
        for row, counts in enumerate(self.counts):
            steps = min(generated[row], len(counts.attended))
            kept = [count for count in counts.kept[:steps] if count is not None]
            stages = []
            for stage in self.stages:
                if isinstance(stage, PrefillStage) and stage.layer in counts.prefill:
                    stages.append(StageTokens(stage.name, stage.layer,
                                              float(counts.prefill[stage.layer])))
                elif isinstance(stage, DecodeStage):
                    mean = (sum(kept) / len(kept) if kept
                            else float(self._visual_in_group(row, stage.layer)))
                    stages.append(StageTokens(stage.name, stage.layer, mean, steps, len(kept)))
            cached = self._visual_per_layer(row, layers)
            attended = sum(counts.attended[:steps]) / steps if steps else cached
            reports.append(LLMTokens(tuple(stages), cached, attended))
        return reports

    def _visual_in_group(self, row: int, layer: int) -> int:
        sequence = max(((s, q) for s, q in self.groups if s <= layer),
                       key=lambda pair: pair[0])[1]
        visual = self.visual[row].to(sequence.columns.device)
        return int((sequence.valid[row] & visual[sequence.columns[row]]).sum())

    def _visual_per_layer(self, row: int, layers: int) -> float:
        return sum(self._visual_in_group(row, layer) for layer in range(layers)) / layers
