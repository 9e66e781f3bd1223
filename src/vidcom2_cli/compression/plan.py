"""KeepPlan: which visual tokens of one video survive compression, and what merges into them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .inllm import InLLMStage


@dataclass(frozen=True)
class Merges:
    """Kept tokens that become weighted sums of several tokens of the same video.

    Indices are flat over the video's (T units, N tokens) layout, unit-major then raster. Entry
    e says: ``weights[e] * x[sources[e]]`` is part of the new value of kept token
    ``targets[e]``. A token that is a target is REPLACED by the sum of its entries (so a token
    that keeps part of itself lists itself as a source); kept tokens that are no target stay as
    they are. Every merge here is linear in the tokens, so one plan applies to every per-token
    tensor of a family alike (the encoder output, Qwen3-VL's deepstack features).
    """

    targets: torch.Tensor  # (E,) int64
    sources: torch.Tensor  # (E,) int64
    weights: torch.Tensor  # (E,) float32

    def __post_init__(self) -> None:
        shapes = {self.targets.shape, self.sources.shape, self.weights.shape}
        if len(shapes) != 1 or self.targets.dim() != 1:
            raise ValueError("Merges needs three 1-D tensors of one length")

    @staticmethod
    def from_groups(groups: Sequence[tuple[int, Sequence[int], Sequence[float]]],
                    device: torch.device | str = "cpu") -> Merges:
        """From ``(target, sources, weights)`` triples (flat indices)."""
        targets = [target for target, sources, _ in groups for _ in sources]
        sources = [source for _, group, _ in groups for source in group]
        weights = [weight for _, _, group in groups for weight in group]
        return Merges(torch.tensor(targets, dtype=torch.long, device=device),
                      torch.tensor(sources, dtype=torch.long, device=device),
                      torch.tensor(weights, dtype=torch.float32, device=device))

    @staticmethod
    def concat(parts: Sequence[Merges]) -> Merges | None:
        """One Merges from several (None when there are none)."""
        parts = [part for part in parts if part.targets.numel()]
        if not parts:
            return None
        return Merges(torch.cat([p.targets for p in parts]), torch.cat([p.sources for p in parts]),
                      torch.cat([p.weights for p in parts]))

    def apply(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` (L >= T*N, D) with the targets replaced by their weighted sums; rows past
        the video's T*N (a trailing newline) are left alone. Sums run in float32."""
        device = tokens.device
        targets, sources = self.targets.to(device), self.sources.to(device)
        slots, inverse = torch.unique(targets, return_inverse=True)
        contributions = tokens.index_select(0, sources).float() * self.weights.to(device)[:, None]
        sums = torch.zeros(slots.numel(), tokens.shape[1], dtype=torch.float32, device=device)
        sums.index_add_(0, inverse, contributions)
        merged = tokens.clone()
        merged[slots] = sums.to(tokens.dtype)
        return merged


@dataclass(frozen=True)
class KeepPlan:
    """The kept tokens of one video, as a boolean mask over its (T units, N tokens) layout,
    and, for methods that merge, what folds into them.

    ``mask[t, n]`` is True when token ``n`` (raster order) of temporal unit ``t`` is kept.
    Everything else (indices, counts, ratios) is derived from the mask, so it cannot disagree.
    A kept token keeps its own place in the sequence (and so its original position), merged or
    not. A plan without ``merges`` is a pure keep-mask and costs nothing more. ``stages`` are
    what the method goes on to do inside the language model (``compression.inllm``).
    """

    mask: torch.Tensor
    method: str
    ratio: float
    grid: tuple[int, int] | None = None
    merges: Merges | None = None
    stages: tuple[InLLMStage, ...] = ()

    def __post_init__(self) -> None:
        if self.mask.dim() != 2 or self.mask.dtype != torch.bool:
            raise ValueError(f"KeepPlan mask must be a 2-D bool tensor, got {self.mask.dtype} "
                             f"of shape {tuple(self.mask.shape)}")
        if self.grid is not None and self.grid[0] * self.grid[1] != self.mask.shape[1]:
            raise ValueError(f"KeepPlan grid {self.grid} does not hold {self.mask.shape[1]} tokens")
        if self.merges is not None and self.merges.targets.numel():
            targets = self.merges.targets.to(self.mask.device)
            if not bool(self.flat_mask()[targets].all()):
                raise ValueError("KeepPlan merges into a token that is not kept")

    @property
    def num_units(self) -> int:
        return self.mask.shape[0]

    @property
    def tokens_per_unit(self) -> int:
        return self.mask.shape[1]

    @property
    def counts(self) -> list[int]:
        """Kept tokens in each temporal unit."""
        return self.mask.sum(dim=1).tolist()

    @property
    def kept(self) -> list[torch.Tensor]:
        """Per unit, the sorted int64 local indices of the kept tokens."""
        columns = self.mask.nonzero()[:, 1]
        return list(torch.split(columns, self.counts))

    @property
    def total_full(self) -> int:
        return self.mask.numel()

    @property
    def total_kept(self) -> int:
        return int(self.mask.sum())

    @property
    def kept_ratio(self) -> float:
        """The ratio actually achieved (rounding and clamping make it differ from ``ratio``)."""
        return self.total_kept / self.total_full

    def flat_mask(self) -> torch.Tensor:
        """The mask over the video's tokens in feature order (unit-major, then raster)."""
        return self.mask.reshape(-1)

    def merged_mask(self) -> torch.Tensor:
        """(T, N) True at dropped tokens whose content folds into a kept token."""
        folded = torch.zeros(self.total_full, dtype=torch.bool, device=self.mask.device)
        if self.merges is not None:
            folded[self.merges.sources.to(self.mask.device)] = True
        return (folded & ~self.flat_mask()).reshape(self.mask.shape)

    @property
    def total_merged(self) -> int:
        """Dropped tokens whose content survives inside a kept token."""
        return 0 if self.merges is None else int(self.merged_mask().sum())

    @property
    def total_merge_targets(self) -> int:
        """Kept tokens that hold a merge (their value is a weighted sum)."""
        return 0 if self.merges is None else int(torch.unique(self.merges.targets).numel())

    def apply(self, tokens: torch.Tensor) -> torch.Tensor:
        """The merges applied to a per-token tensor laid out as the features (first T*N rows);
        the caller then keeps the rows of the mask."""
        return tokens if self.merges is None else self.merges.apply(tokens)

    def spatial_frequency(self) -> torch.Tensor:
        """Fraction of units in which each grid position was kept, shaped (h, w) when known."""
        frequency = self.mask.float().mean(dim=0)
        return frequency.reshape(self.grid) if self.grid is not None else frequency
