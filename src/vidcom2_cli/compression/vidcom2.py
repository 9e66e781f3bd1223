"""The VidCom2 scorer and its Frame Compression Adjustment (FCA) budgets.

Follows the authors' released code (see docs: steps 1-8), which differs from the paper's
equations: scores use a multi-scale Gaussian kernel on L2-normalised tokens restricted to the
lowest-variance half of the channels, not cosine similarity on full features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .method import MethodInput, MethodSpec, Selection

KERNEL_BANDWIDTHS = (1 / 8, 1 / 4, 1 / 2, 1.0, 2.0)
DEFAULT_TAU = 0.01
NORM_EPS = 1e-12


@dataclass(frozen=True)
class Similarity:
    """Kernel similarities of every token to the video centre and to its frame's centre.

    Both are (T, N) float32; high means redundant.
    """

    video: torch.Tensor
    frame: torch.Tensor


# CPU row blocks of about 4 MB: the temporaries of a blocked pass come back from the allocator,
# while one full-size temporary (90 MB for 32 x 196 x 3584) is page-faulted in on every call and
# costs more than the arithmetic. CUDA's caching allocator has no such cost: one block there.
_CPU_BLOCK_ELEMENTS = 1 << 20


def _row_blocks(flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if flat.device.type != "cpu":
        return (flat,)
    return flat.split(max(1, _CPU_BLOCK_ELEMENTS // flat.shape[1]))


def _kernel(squared_distance: torch.Tensor) -> torch.Tensor:
    total = torch.zeros_like(squared_distance)
    for bandwidth in KERNEL_BANDWIDTHS:
        total += torch.exp(squared_distance / (-2.0 * bandwidth))
    return total


def similarity(features: torch.Tensor) -> Similarity:
    """Steps 1-4: channel subset, normalisation, centres and kernel similarities (float32).

    Distances use ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2 so that the normalised, channel-subset
    tokens are never materialised: every pass over the (T*N, D) features is a reduction or a
    matrix product.
    """
    units, tokens, channels = features.shape
    x = features.detach().float()
    flat = x.reshape(units * tokens, channels)
    blocks = _row_blocks(flat)

    # Step 1: population variance per channel (two-pass), keep the floor(D/2) lowest.
    mean = flat.sum(dim=0) / flat.shape[0]
    squared_deviation = torch.zeros_like(mean)
    for block in blocks:
        squared_deviation += (block - mean).square().sum(dim=0)
    variance = squared_deviation / flat.shape[0]
    kept_channels = torch.zeros(channels, dtype=x.dtype, device=x.device)
    kept_channels[torch.topk(variance, channels // 2, largest=False, sorted=False).indices] = 1.0

    # Step 2: L2 normalisation over the kept channels, as a per-token scale (F.normalize's eps).
    norms = torch.empty(units * tokens, dtype=x.dtype, device=x.device)
    for block, block_norms in zip(blocks, norms.split([len(b) for b in blocks]), strict=True):
        torch.mv(block.square(), kept_channels, out=block_norms)
    norms = norms.sqrt_()
    scale = (1.0 / norms.clamp(min=NORM_EPS)).reshape(units, tokens)
    squared_norms = (norms.reshape(units, tokens) * scale).square()

    # Step 3: frame centres and the video centre, zero outside the kept channels.
    frame_centres = torch.bmm((scale / tokens).unsqueeze(1), x).squeeze(1) * kept_channels
    video_centre = frame_centres.mean(dim=0)

    # Step 4: squared distances to the centres, then the multi-scale Gaussian kernel. Both dot
    # products come from one pass over the features: (T, 2, D) @ (T, D, N).
    centres = torch.stack([video_centre.expand_as(frame_centres), frame_centres], dim=1)
    video_dot, frame_dot = (torch.bmm(centres, x.transpose(1, 2)) * scale.unsqueeze(1)).unbind(1)
    video_distance = squared_norms - 2.0 * video_dot + video_centre.square().sum()
    frame_distance = squared_norms - 2.0 * frame_dot + frame_centres.square().sum(1, keepdim=True)
    return Similarity(video=_kernel(video_distance.clamp(min=0.0)),
                      frame=_kernel(frame_distance.clamp(min=0.0)))


def budget_ratios(video_similarity: torch.Tensor, ratio: float, tau: float = DEFAULT_TAU
                  ) -> torch.Tensor:
    """Steps 5-6: per-unit keep ratios r_t, averaging ``ratio`` before the clamp at 1."""
    uniqueness = -video_similarity.mean(dim=1)
    weights = torch.softmax((uniqueness - uniqueness.max()) / tau, dim=0)
    return (ratio * (1.0 + weights - weights.mean())).clamp(max=1.0)


def counts_from_ratios(ratios: torch.Tensor, tokens_per_unit: int) -> torch.Tensor:
    """Step 7: k_t = round-half-to-even(r_t * N), at least 1 (int64, same device)."""
    return torch.round(ratios * tokens_per_unit).long().clamp(min=1, max=tokens_per_unit)


def uniform_counts(units: int, tokens_per_unit: int, ratio: float,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """The plain budget: round(R * N) (at least 1) in every unit."""
    ratios = torch.full((units,), ratio, dtype=torch.float32, device=device)
    return counts_from_ratios(ratios, tokens_per_unit)


def keep_lowest(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mask keeping, in each row, the ``counts[t]`` entries with the smallest score.

    Ties break towards the lower index (stable sort), so results are deterministic.
    """
    order = torch.argsort(scores, dim=1, stable=True)
    ranks = torch.empty_like(order)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    return ranks < counts.unsqueeze(1)


def fca_counts(similarities: Similarity, ratio: float, tau: float = DEFAULT_TAU) -> torch.Tensor:
    """Steps 5-7 from precomputed similarities: per-unit kept-token counts."""
    tokens_per_unit = similarities.video.shape[1]
    return counts_from_ratios(budget_ratios(similarities.video, ratio, tau), tokens_per_unit)


def vidcom2_scores(similarities: Similarity) -> torch.Tensor:
    """Step 8's score: low = unlike both the video and its own frame = kept first."""
    return similarities.video + similarities.frame


def flat_or_given(inp: MethodInput) -> torch.Tensor:
    """The method input's FCA budgets when it has them, else a flat round(R*N) per unit."""
    if inp.budgets is not None:
        return inp.budgets
    units, tokens, _ = inp.features.shape
    return uniform_counts(units, tokens, inp.ratio, device=inp.features.device)


def _run(inp: MethodInput) -> Selection:
    scores = vidcom2_scores(similarity(inp.features))
    return Selection(keep_lowest(scores, flat_or_given(inp)))


VIDCOM2 = MethodSpec(
    name="vidcom2",
    keeps="tokens least like their frame and the video (multi-scale kernel on features)",
    budget="a flat round(R*N) per unit",
    run=_run,
    fca="VidCom2 FCA budgets: more for frames unlike the video",
)
