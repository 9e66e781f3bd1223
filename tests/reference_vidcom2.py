"""A plain, loop-based VidCom2 written straight from the algorithm's steps 1-8.

It is deliberately naive (one frame at a time, direct distance formulas, Python rounding) so
the vectorised implementation can be checked against it, and timed against it in benchmarks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BANDWIDTHS = (1 / 8, 1 / 4, 1 / 2, 1.0, 2.0)


def _kernel(tokens: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    squared = ((tokens - centre) ** 2).sum(dim=-1)
    return sum(torch.exp(-squared / (2 * bandwidth)) for bandwidth in BANDWIDTHS)


def reference_budgets_and_scores(features: torch.Tensor, ratio: float, tau: float = 0.01
                                 ) -> tuple[list[int], list[torch.Tensor]]:
    """Per-frame kept counts and per-frame selection scores (v + f), one frame at a time."""
    x = features.float()
    units, tokens, channels = x.shape
    variance = x.reshape(units * tokens, channels).var(dim=0, unbiased=False)
    subset = torch.topk(variance, channels // 2, largest=False).indices
    frames = [F.normalize(x[t][:, subset], dim=-1, eps=1e-12) for t in range(units)]
    video_centre = torch.cat(frames).mean(dim=0)
    video_sims, scores = [], []
    for frame in frames:
        video_sim = _kernel(frame, video_centre)
        frame_sim = _kernel(frame, frame.mean(dim=0))
        video_sims.append(video_sim)
        scores.append(video_sim + frame_sim)
    uniqueness = torch.stack([-sim.mean() for sim in video_sims])
    weights = torch.softmax((uniqueness - uniqueness.max()) / tau, dim=0)
    counts = []
    for t in range(units):
        frame_ratio = min(ratio * (1 + weights[t] - weights.mean()), torch.tensor(1.0))
        counts.append(max(1, round(float(frame_ratio * tokens))))
    return counts, scores


def reference_select(features: torch.Tensor, ratio: float) -> list[torch.Tensor]:
    counts, scores = reference_budgets_and_scores(features, ratio)
    kept = []
    for count, score in zip(counts, scores, strict=True):
        order = sorted(range(len(score)), key=lambda n: float(score[n]))
        kept.append(torch.tensor(sorted(order[:count]), dtype=torch.int64))
    return kept
