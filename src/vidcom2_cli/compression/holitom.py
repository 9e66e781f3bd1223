"""HoliTom (arXiv 2505.21334), its outer-LLM stage as the official code runs it.

1. Temporal similarity: per spatial position, cosine of consecutive frames' L2-normalised tokens.
2. Segmentation by dynamic programming: window [s, e] saves (positions whose similarity exceeds
   tau at every consecutive pair) x (e - s) tokens; best[i] = max(best[i-1], best[s-1] +
   gain(s, i)) over windows of 2..max_window frames, a window chosen only when strictly better
   (shorter windows are tried first, so ties keep the shorter one); total_reduced = best[F-1].
3. r' = min(R / ((F*N - total_reduced) / (F*N)), 1): the ratio left for the surviving tokens.
4. In a multi-frame window a position is static when its similarity exceeds tau at every pair;
   its static token is the window MEAN at that position. Everything else is dynamic.
5. Dynamic tokens, per frame: m = ceil(n_dyn * r'); dominant = round(m * (1 - D)) by attention
   received; contextual = m - dominant (D = 0, the default and the published setting: none).
   Static tokens, per window: max(1, round(n_static * r')) DPC-kNN centres (k = min(K,
   #centres)); every other static token joins its nearest centre (Euclidean); merged =
   beta*centre + (1-beta)*mean(members); a centre with no members stays the plain window mean.

Every static token is a window mean, so a merged static token is a fixed linear combination of
original tokens: the weights are composed down to them (centre frames beta/L each, member frames
(1-beta)/(|members| L) each) and the token sits at the centre position's token in the window's
FIRST frame (the paper's "merged into their first occurrence"). Nothing is reordered: the official
OneVision order (per window, static tokens first, contiguous positions) is not reproduced.

Assumptions where the description stops: the contextual share (D > 0) reuses VisionZip's
contextual step on the frame's remaining dynamic tokens with feature cosine as the metric;
round() is Python's half-to-even. One deviation: a window with static positions keeps at least
one centre, where the official code keeps none when round(n_static * r') is 0; there, a window
whose positions are all static (tiny grids, low R) vanished from the video, and a video made of
such windows kept no token at all. So every frame keeps a token or folds whole into its window's
static tokens.

``holitom+fca``: HoliTom's budget is global (r'), so VidCom2's per-frame counts k_t cannot replace
it one for one; the variant keeps r' and the static stage and scales each frame's dynamic budget
by the frame's FCA weight: m_t = min(n_dyn_t, ceil(n_dyn_t * r' * k_t / (R*N))). The k_t average
about R*N, so the total stays near R while distinctive frames keep more dynamic tokens.

The inner-LLM stage (merging at layer K) is not part of this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .density import dpc_scores
from .method import MethodInput, MethodSpec, Selection
from .plan import Merges
from .visionzip import contextual_merge


@dataclass(frozen=True)
class Window:
    """Frames first..last (inclusive) and the positions static over all of them."""

    first: int
    last: int
    static: torch.Tensor  # (N,) bool

    @property
    def length(self) -> int:
        return self.last - self.first + 1


def temporal_similarity(features: torch.Tensor) -> torch.Tensor:
    """(T-1, N): cosine between each token and the same position in the next frame."""
    normed = F.normalize(features.float(), dim=-1)
    return (normed[:-1] * normed[1:]).sum(dim=-1)


def segment(static_pairs: torch.Tensor, max_window: int) -> tuple[list[tuple[int, int]], int]:
    """Step 2: the windows (first, last) that maximise the saved tokens, and that maximum.

    ``static_pairs`` (T-1, N) bool: position static between frames p and p+1.
    """
    units = static_pairs.shape[0] + 1
    best = [0] * units
    start = list(range(units))
    for last in range(1, units):
        best[last] = best[last - 1]
        longest = min(last + 1, max_window)
        if longest < 2:
            continue
        # runs[j]: positions static over every pair of the window [last-1-j, last].
        pairs = static_pairs[last - longest + 1:last].flip(0).long()
        runs = pairs.cumprod(dim=0).sum(dim=1).tolist()
        for length in range(2, longest + 1):
            first = last - length + 1
            value = (best[first - 1] if first > 0 else 0) + runs[length - 2] * (length - 1)
            if value > best[last]:
                best[last], start[last] = value, first
    windows = []
    last = units - 1
    while last >= 0:
        windows.append((start[last], last))
        last = start[last] - 1
    return windows[::-1], best[-1]


def rescaled_ratio(ratio: float, total: int, reduced: int) -> float:
    """Step 3: the ratio to apply to what the segmentation leaves."""
    return min(ratio / ((total - reduced) / total), 1.0)


def cluster_merges(positions: torch.Tensor, window: Window, tokens: int, centres: int,
                   beta: float, means: torch.Tensor, k: int, generator: torch.Generator
                   ) -> tuple[torch.Tensor, Merges]:
    """Step 5's static part: DPC centres among a window's static tokens and their beta merges.

    ``positions`` (M,) are the static positions and ``means`` (M, D) their window means. Returns
    the flat indices of the kept tokens (each centre in the window's first frame) and the merges
    written on the original tokens of every frame of the window.
    """
    chosen = torch.topk(dpc_scores(means, k, generator), centres).indices
    owner = torch.cdist(means.float(), means[chosen].float(),
                        compute_mode="donot_use_mm_for_euclid_dist").argmin(dim=1)
    owner[chosen] = torch.arange(centres, device=owner.device)
    is_centre = torch.zeros(positions.numel(), dtype=torch.bool, device=owner.device)
    is_centre[chosen] = True
    members = torch.bincount(owner[~is_centre], minlength=centres)
    centre_weight = torch.where(members > 0, beta, 1.0)
    member_weight = (1.0 - beta) / members.clamp(min=1)
    weight = torch.where(is_centre, centre_weight[owner], member_weight[owner])
    frames = torch.arange(window.first, window.last + 1, device=owner.device)
    offsets = frames[:, None] * tokens
    length = window.length
    targets = window.first * tokens + positions[chosen][owner]
    merges = Merges(targets=targets.repeat(length),
                    sources=(offsets + positions[None, :]).reshape(-1),
                    weights=(weight / length).float().repeat(length))
    return window.first * tokens + positions[chosen], merges


def dynamic_keep(unit: int, dynamic: torch.Tensor, inp: MethodInput, budget: int,
                 share: float) -> tuple[torch.Tensor, Merges | None]:
    """Step 5's dynamic part in one frame: attention top-k, then VisionZip-style contextual
    tokens from the rest (only when the contextual share D is above 0)."""
    tokens = inp.features.shape[1]
    dominant = round(budget * (1.0 - share))
    scores = inp.signals.require("received")[unit, dynamic].float()
    order = torch.argsort(-scores, stable=True)
    top = dynamic[order[:dominant]].sort().values
    if dominant == budget:
        return unit * tokens + top, None
    rest = dynamic[order[dominant:]].sort().values
    extra, merges = contextual_merge(unit * tokens + rest, inp.features[unit, rest],
                                     budget - dominant)
    return torch.cat([unit * tokens + top, extra]), merges


def static_centres(static: int, rescaled: float) -> int:
    """Step 5's cluster count of a window's static positions: round(n_static * r'), at least
    one where there is any (the deviation described above)."""
    return max(1, round(static * rescaled)) if static else 0


def _windows(static_pairs: torch.Tensor, max_window: int) -> tuple[list[Window], int]:
    spans, reduced = segment(static_pairs, max_window)
    windows = []
    for first, last in spans:
        if last == first:
            static = torch.zeros(static_pairs.shape[1], dtype=torch.bool,
                                 device=static_pairs.device)
        else:
            static = static_pairs[first:last].all(dim=0)
        windows.append(Window(first, last, static))
    return windows, reduced


def _dynamic_budget(inp: MethodInput, unit: int, count: int, rescaled: float) -> int:
    if inp.budgets is None:
        return math.ceil(count * rescaled)
    weight = float(inp.budgets[unit]) / (inp.ratio * inp.features.shape[1])
    return min(count, math.ceil(count * rescaled * weight))


def _run(inp: MethodInput) -> Selection:
    options = dict(inp.options)
    features = inp.features
    units, tokens, _ = features.shape
    inp.signals.require("received")
    static_pairs = temporal_similarity(features) > options["tau"]
    windows, reduced = _windows(static_pairs, int(options["max_window"]))
    rescaled = rescaled_ratio(inp.ratio, units * tokens, reduced)
    generator = torch.Generator().manual_seed(inp.seed)
    kept, parts = [], []
    for window in windows:
        positions = window.static.nonzero().squeeze(1)
        centres = static_centres(positions.numel(), rescaled)
        if centres > 0:
            means = features[window.first:window.last + 1, positions].float().mean(dim=0)
            k = min(int(options["K"]), centres)
            centre_slots, merges = cluster_merges(positions, window, tokens, centres,
                                                  options["beta"], means, k, generator)
            kept.append(centre_slots)
            parts.append(merges)
        dynamic = (~window.static).nonzero().squeeze(1)
        for unit in range(window.first, window.last + 1):
            budget = _dynamic_budget(inp, unit, dynamic.numel(), rescaled)
            slots, merges = dynamic_keep(unit, dynamic, inp, budget, options["D"])
            kept.append(slots)
            if merges is not None:
                parts.append(merges)
    mask = torch.zeros(units * tokens, dtype=torch.bool, device=features.device)
    mask[torch.cat(kept)] = True
    return Selection(mask.reshape(units, tokens), Merges.concat(parts))


_DEFAULTS = {"tau": 0.8, "beta": 0.6, "D": 0.0, "K": 7.0, "max_window": 1024.0}

HOLITOM = MethodSpec(
    name="holitom",
    keeps="temporal windows (DP segmentation) whose static tokens become window means, "
          "DPC-kNN clustered and beta-merged; dynamic tokens by attention received",
    budget="a global R rescaled to r' over what the windows leave (not per unit)",
    run=_run,
    signals=("received",),
    defaults=dict.fromkeys(("onevision", "llava_video", "qwen"), _DEFAULTS),
    option_help={
        "tau": "per-position cosine above which a token is static between consecutive frames "
               "(default 0.8; the published scripts use 0.65 at R = 0.10, 0.8 otherwise)",
        "beta": "weight of a cluster centre in its merged static token",
        "D": "contextual share of each frame's dynamic budget (0: attention top-k only)",
        "K": "k-NN size of the DPC density, used as min(K, number of centres)",
        "max_window": "longest temporal window of the segmentation, in frames",
    },
    option_bounds={"tau": (-1.0, 1.0), "beta": (0.0, 1.0), "D": (0.0, 1.0),
                   "K": (1.0, math.inf), "max_window": (1.0, math.inf)},
    fca="global r' as usual, each frame's dynamic budget scaled by its VidCom2 FCA count / "
        "(R*N)",
    notes="outer-LLM stage only (no inner-LLM merge); tokens are not reordered: a static token "
          "(window mean, DPC beta-merged) sits at its position's token in the window's first "
          "frame; D > 0 uses VisionZip's contextual step on features (unspecified officially)",
)
