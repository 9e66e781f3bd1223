"""KeepPlan: which visual tokens of one video survive compression."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KeepPlan:
    """The kept tokens of one video, as a boolean mask over its (T units, N tokens) layout.

    ``mask[t, n]`` is True when token ``n`` (raster order) of temporal unit ``t`` is kept.
    Everything else (indices, counts, ratios) is derived from the mask, so it cannot disagree.
    """

    mask: torch.Tensor
    method: str
    ratio: float
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.mask.dim() != 2 or self.mask.dtype != torch.bool:
            raise ValueError(f"KeepPlan mask must be a 2-D bool tensor, got {self.mask.dtype} "
                             f"of shape {tuple(self.mask.shape)}")
        if self.grid is not None and self.grid[0] * self.grid[1] != self.mask.shape[1]:
            raise ValueError(f"KeepPlan grid {self.grid} does not hold {self.mask.shape[1]} tokens")

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

    def spatial_frequency(self) -> torch.Tensor:
        """Fraction of units in which each grid position was kept, shaped (h, w) when known."""
        frequency = self.mask.float().mean(dim=0)
        return frequency.reshape(self.grid) if self.grid is not None else frequency
