"""Token selectors other than VidCom2's scorer: seeded random and evenly spaced."""

from __future__ import annotations

import torch

from .method import MethodInput, MethodSpec, Selection
from .vidcom2 import flat_or_given, keep_lowest


def random_mask(units: int, tokens_per_unit: int, counts: torch.Tensor, seed: int) -> torch.Tensor:
    """Keep ``counts[t]`` tokens of unit t chosen uniformly at random (reproducible per seed)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    scores = torch.rand(units, tokens_per_unit, generator=generator)
    return keep_lowest(scores.to(counts.device), counts)


def evenly_spaced_mask(tokens_per_unit: int, counts: torch.Tensor) -> torch.Tensor:
    """Keep ``counts[t]`` tokens of unit t evenly spaced in raster order.

    Slot j of k sits at floor((j + 1/2) * N / k): the centres of k equal runs, distinct for k <= N.
    """
    device = counts.device
    slots = torch.arange(tokens_per_unit, device=device).unsqueeze(0)
    per_unit = counts.unsqueeze(1)
    positions = torch.div((2 * slots + 1) * tokens_per_unit, 2 * per_unit, rounding_mode="floor")
    # Unused slots (j >= k) repeat slot 0's position, which is kept anyway.
    positions = torch.where(slots < per_unit, positions, positions[:, :1])
    mask = torch.zeros(counts.shape[0], tokens_per_unit, dtype=torch.bool, device=device)
    return mask.scatter_(1, positions, True)


def _random(inp: MethodInput) -> Selection:
    units, tokens, _ = inp.features.shape
    return Selection(random_mask(units, tokens, flat_or_given(inp), inp.seed))


def _uniform(inp: MethodInput) -> Selection:
    return Selection(evenly_spaced_mask(inp.features.shape[1], flat_or_given(inp)))


RANDOM = MethodSpec(name="random", keeps="tokens drawn at random (seeded)",
                    budget="a flat round(R*N) per unit", run=_random, fca="VidCom2 FCA budgets")
UNIFORM = MethodSpec(name="uniform", keeps="tokens evenly spaced in raster order",
                     budget="a flat round(R*N) per unit", run=_uniform, fca="VidCom2 FCA budgets")
