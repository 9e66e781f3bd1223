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

Inner-LLM stage (``InnerMerge``, run by the decoder loop of ``models.decoder_loop``), as the
official ``Qwen2Model_holitom``: at the input of layer K (0-based) in the prefill, the attention
of the last prompt token at layer K-1 (mean over heads) over the visual tokens; the top
round(n (1 - r)) stay; every other visual token goes to its most cosine-similar kept token
(hidden states entering layer K) and is averaged into it pairwise in index order, h <- (h +
h_other) / 2; layers >= K see only the kept tokens at their original positions; decoding is not
touched (its positions continue the uncompressed numbering). Official scripts: K = 18, r = 0.5
(LLaVA-OV-7B, LLaVA-Video-7B). Differences: per batch row (the official code reads row 0), at
least one token kept, similarities in float32 (or wider) and the pairwise averages composed into one
weighted sum (weights 2^-m for the kept token, 2^-(m-i+1) for its i-th of m merged tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .density import dpc_scores
from .inllm import InLLMStage, PrefillStage, SpanReduction, VisualSpan
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


def inner_merge(hidden: torch.Tensor, attention: torch.Tensor, share: float) -> SpanReduction:
    """The inner stage on one sequence's visual tokens: (n, D) hidden states entering layer K
    and (n,) attention from the last prompt token at layer K-1; ``share`` r is merged away."""
    count = hidden.shape[0]
    keep = min(count, max(1, round(count * (1.0 - share))))
    if keep == count:
        return SpanReduction(torch.arange(count, device=hidden.device), hidden)
    top = torch.topk(attention.float(), keep).indices.sort().values
    is_top = torch.zeros(count, dtype=torch.bool, device=hidden.device)
    is_top[top] = True
    rest = (~is_top).nonzero().squeeze(1)  # ascending: the official merge order
    work = hidden.to(torch.promote_types(hidden.dtype, torch.float32))
    kept_states = F.normalize(work[top], dim=-1)
    owner = (F.normalize(work[rest], dim=-1) @ kept_states.T).argmax(dim=1)
    # h <- (h + x_1)/2, then (h + x_2)/2, ...: the kept token weighs 2^-m, its i-th of m
    # merged tokens 2^-(m-i+1)
    sizes = torch.bincount(owner, minlength=keep)
    order = torch.argsort(owner, stable=True)
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.empty_like(owner)
    rank[order] = torch.arange(owner.numel(), device=owner.device) - starts[owner[order]]
    weights = torch.pow(2.0, -(sizes[owner] - rank).double()).to(work.dtype)
    merged = work[top] * torch.pow(2.0, -sizes.double()).to(work.dtype)[:, None]
    merged.index_add_(0, owner, work[rest] * weights[:, None])
    return SpanReduction(top, merged.to(hidden.dtype))


@dataclass(frozen=True)
class InnerMerge(PrefillStage):
    """HoliTom's inner-LLM merge at layer ``layer``, merging ``share`` of the visual tokens."""

    share: float

    @property
    def name(self) -> str:
        return f"merge@{self.layer}"

    def reduce(self, span: VisualSpan) -> SpanReduction:
        return inner_merge(span.hidden, span.attention, self.share)


def _stages(options: dict[str, float]) -> tuple[InLLMStage, ...]:
    if options["inner_merge"] <= 0:
        return ()
    return (InnerMerge(int(options["inner_layer"]), options["inner_merge"]),)


_DEFAULTS = {"tau": 0.8, "beta": 0.6, "D": 0.0, "K": 7.0, "max_window": 1024.0,
             "inner_layer": 18.0, "inner_merge": 0.5}

HOLITOM = MethodSpec(
    name="holitom",
    keeps="temporal windows (DP segmentation) whose static tokens become window means, "
          "DPC-kNN clustered and beta-merged; dynamic tokens by attention received",
    budget="a global R rescaled to r' over what the windows leave (not per unit)",
    run=_run,
    signals=("received",),
    defaults={"onevision": _DEFAULTS, "llava_video": _DEFAULTS,
              "qwen": {**_DEFAULTS, "inner_merge": 0.0}},
    option_help={
        "tau": "per-position cosine above which a token is static between consecutive frames "
               "(default 0.8; the published scripts use 0.65 at R = 0.10, 0.8 otherwise)",
        "beta": "weight of a cluster centre in its merged static token",
        "D": "contextual share of each frame's dynamic budget (0: attention top-k only)",
        "K": "k-NN size of the DPC density, used as min(K, number of centres)",
        "max_window": "longest temporal window of the segmentation, in frames",
        "inner_layer": "decoder layer (0-based) at whose input the inner merge acts, reading "
                       "the layer before's attention (official 18)",
        "inner_merge": "share of the visual tokens merged away inside the language model "
                       "(official 0.5 on LLaVA; 0 turns the inner stage off, the qwen default)",
    },
    option_bounds={"tau": (-1.0, 1.0), "beta": (0.0, 1.0), "D": (0.0, 1.0),
                   "K": (1.0, math.inf), "max_window": (1.0, math.inf),
                   "inner_layer": (1.0, math.inf), "inner_merge": (0.0, 1.0)},
    fca="global r' as usual, each frame's dynamic budget scaled by its VidCom2 FCA count / "
        "(R*N)",
    notes="the inner-LLM merge (layer 18, half the visual tokens) runs by default on LLaVA "
          "(the official families) and is off on the qwen profile (inner_merge > 0 turns it "
          "on where the language model is a full-attention stack; refused on Qwen3.5); it "
          "needs the whole prompt in one pass, so a reused video prefix runs only the layers "
          "before it. Tokens are not reordered: a static token (window mean, DPC beta-merged) "
          "sits at its position's token in the window's first frame; D > 0 uses VisionZip's "
          "contextual step on features (unspecified officially)",
    llm_stages=_stages,
)
