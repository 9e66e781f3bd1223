"""VisionZip (arXiv 2412.04467) as its SigLIP/LLaVA-OneVision port runs it, per frame.

Per unit t with budget S_t (round(R*N), or VidCom2's FCA count in ``visionzip+fca``):
- dominant = floor(S_t * dominant_share) tokens with the most attention received;
- contextual = S_t - dominant: the remaining tokens in original order, their keys
  L2-normalised, targets at a uniform stride (step = max(1, N_rem // contextual); indices
  0, step, 2*step, ..., the first ``contextual``); every other remaining token goes to its most
  key-cosine-similar target; a contextual token = target + mean(assigned) (the official SUM,
  not an average; a target with nothing assigned stays as it is).

Family profiles: ``onevision`` and ``llava_video`` use the published 54:10 split
(dominant_share 54/64). The official Qwen2.5-VL file handles images only, choosing
floor(0.65 N) dominant and max(floor(0.05 N), 1) contextual tokens over the whole sample; for
video we apply the per-frame rule above with the Qwen file's 65:5 split (dominant_share 65/70),
so every unit keeps about R*N tokens.

Deviations: the official ports write the contextual tokens after the dominant ones with
contiguous positions; here every kept token stays at its own place and position (a merged token
at its target's). Attention "received" stands for the Qwen file's query-SUMMED attention (a
constant factor: same ranking).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .method import MethodInput, MethodSpec, Selection
from .plan import Merges
from .vidcom2 import flat_or_given, keep_lowest

SIGLIP_SHARE = 54 / 64
QWEN_SHARE = 65 / 70


def stride_targets(count: int, contextual: int) -> torch.Tensor:
    """Local indices 0, step, 2*step, ... (the first ``contextual``) of ``count`` tokens."""
    step = max(1, count // contextual)
    return torch.arange(0, count, step)[:contextual]


def contextual_merge(rest: torch.Tensor, metric: torch.Tensor, contextual: int
                     ) -> tuple[torch.Tensor, Merges | None]:
    """VisionZip's contextual step over the tokens ``rest`` (flat indices, original order).

    ``metric`` (len(rest), Dk) is what similarity is measured on. Returns the flat indices of
    the targets (kept) and the merges: target + mean of the tokens assigned to it.
    """
    if contextual <= 0 or rest.numel() == 0:
        return rest[:0], None
    local = stride_targets(rest.numel(), contextual).to(rest.device)
    is_target = torch.zeros(rest.numel(), dtype=torch.bool, device=rest.device)
    is_target[local] = True
    others = (~is_target).nonzero().squeeze(1)
    targets = rest[local]
    if others.numel() == 0:
        return targets, None
    normed = F.normalize(metric.float(), dim=-1)
    choice = (normed[others] @ normed[local].T).argmax(dim=1)
    sizes = torch.bincount(choice, minlength=local.numel())
    holders = targets[sizes > 0]
    merges = Merges(
        targets=torch.cat([holders, targets[choice]]),
        sources=torch.cat([holders, rest[others]]),
        weights=torch.cat([torch.ones(holders.numel(), device=rest.device),
                           1.0 / sizes[choice].float()]))
    return targets, merges


def split_budget(total: int, dominant_share: float) -> tuple[int, int]:
    """(dominant, contextual) = (floor(S * share), S - dominant)."""
    dominant = math.floor(total * dominant_share)
    return dominant, total - dominant


def _run(inp: MethodInput) -> Selection:
    received = inp.signals.require("received").float()
    keys = inp.signals.require("keys")
    tokens = inp.features.shape[1]
    share = inp.options["dominant_share"]
    splits = [split_budget(int(s), share) for s in flat_or_given(inp).tolist()]
    dominant = torch.tensor([d for d, _ in splits], device=received.device)
    mask = keep_lowest(-received, dominant)
    parts = []
    for unit, (_, contextual) in enumerate(splits):
        rest = (~mask[unit]).nonzero().squeeze(1)
        kept, merges = contextual_merge(rest + unit * tokens, keys[unit, rest], contextual)
        mask.view(-1)[kept] = True
        if merges is not None:
            parts.append(merges)
    return Selection(mask, Merges.concat(parts))


VISIONZIP = MethodSpec(
    name="visionzip",
    keeps="dominant tokens by attention received, plus stride-target contextual tokens that "
          "sum in their key-similar neighbours",
    budget="a flat round(R*N) per unit, split dominant:contextual (54:10; qwen 65:5)",
    run=_run,
    signals=("received", "keys"),
    defaults={"onevision": {"dominant_share": SIGLIP_SHARE},
              "llava_video": {"dominant_share": SIGLIP_SHARE},
              "qwen": {"dominant_share": QWEN_SHARE}},
    option_help={"dominant_share": "share of each unit's budget kept as dominant tokens "
                                   "(floor); the rest become contextual (merged) tokens. "
                                   "Published 54/64 (SigLIP/CLIP); 65/70 for qwen, from the "
                                   "official Qwen2.5-VL file's 0.65N:0.05N"},
    option_bounds={"dominant_share": (0.0, 1.0)},
    fca="VidCom2 FCA budgets per unit, split dominant:contextual as usual",
    notes="per frame as the SigLIP/OneVision port; qwen: per-unit rule with the official Qwen "
          "file's 65:5 split (that file handles images only); kept and merged tokens stay at "
          "their own positions instead of being packed dominant-first. The published "
          "15/20/25% rows keep 30/40/50 of 196 tokens per frame (R x 200), one more than the "
          "round(R x 196) = 29/39/49 kept here (10%: 20 both)",
)
