"""DPC-kNN density-peak scores (as FastVID's and HoliTom's official code compute them)."""

from __future__ import annotations

import math

import torch

TIE_NOISE = 1e-6


def dpc_scores(tokens: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """rho * delta for each of ``tokens`` (M, D); high = a density peak far from denser ones.

    Distances are Euclidean divided by sqrt(D); rho = exp(-mean squared distance to the k
    nearest tokens, the token itself included) plus uniform noise in [0, 1e-6) drawn from the
    CPU ``generator`` (M values per call) to break ties; delta = the distance to the nearest
    token of higher rho, or for the densest token the largest distance in the set.
    """
    count, channels = tokens.shape
    distance = (_pairwise_distance(tokens) / math.sqrt(channels)).float()
    nearest = distance.topk(min(k, count), dim=1, largest=False).values
    noise = torch.rand(count, generator=generator).to(tokens.device) * TIE_NOISE
    rho = torch.exp(-nearest.square().mean(dim=1)) + noise
    denser = rho.unsqueeze(0) > rho.unsqueeze(1)  # [i, j]: j is denser than i
    delta = torch.where(denser, distance, distance.max()).min(dim=1).values
    return rho * delta


def _pairwise_distance(tokens: torch.Tensor) -> torch.Tensor:
    """Euclidean distances in float64 through one matrix product: as exact as the direct
    differences for these sizes, and much faster than ``torch.cdist`` on CPU."""
    x = tokens.double()
    squared = x.square().sum(dim=1)
    gram = x @ x.T
    return (squared[:, None] + squared[None, :] - 2.0 * gram).clamp(min=0.0).sqrt()
