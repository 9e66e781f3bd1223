"""Input validation shared by every selector."""

from __future__ import annotations

import math

import torch


def check_ratio(ratio: float) -> float:
    """Return ``ratio`` as a float, or raise ValueError unless it lies in (0, 1]."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}") from None
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
    return value


def check_features(features: torch.Tensor) -> None:
    """Raise ValueError unless ``features`` is a finite float (T, N, D) tensor, T, N, D > 0."""
    if not isinstance(features, torch.Tensor):
        raise ValueError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() != 3:
        raise ValueError(f"features must have shape (T, N, D), got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"features must be a floating tensor, got {features.dtype}")
    units, tokens, channels = features.shape
    if units == 0 or tokens == 0 or channels == 0:
        raise ValueError(f"features must have T, N, D > 0, got {tuple(features.shape)}")
    # A per-channel sum is NaN/inf when any entry is, and costs one fast reduction instead of
    # a full-size boolean temporary. It also catches values too large to score in float32.
    if not bool(torch.isfinite(features.sum(dim=(0, 1), dtype=torch.float32)).all()):
        raise ValueError("features contain NaN or infinite values (or overflow float32)")
