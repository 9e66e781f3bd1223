"""FastVID (arXiv 2503.11187): DySeg segments, then ATS salient tokens plus DTM merged anchors.

Follows the official code (docs/METHODS.md section 1):

1. DySeg: s_i = cos(g_i, g_{i+1}) with g_t the mean of unit t's features; a cut after unit i
   for the c-1 smallest s_i and for every s_i < tau (with fewer than c units every unit is
   its own segment).
2. Budgets from the per-frame retain r_t = max(1, floor(N * R)):
   - ``onevision`` ("parallel" code): every frame S_t = r_t - floor(r_t d) salient tokens; anchor
     frames (distance from the segment's end a multiple of p) get
     floor(sum_seg floor(r_t d) / ceil(L/p)) context anchors each, other frames none.
   - ``llava_video`` and ``qwen`` ("straightforward" code): per segment retain = sum_seg r_t,
     context = floor(retain d) (``qwen``: at least 1), salient = retain - context, split over
     the segment's frames (remainder to the earliest), context split evenly over the anchor
     frames (remainder to the later ones). ``qwen`` first sub-cuts a multi-frame segment where
     s_i < ignore: only the last frame of each sub-run gets budget (salient split over the
     sub-runs, anchors every p-th sub-run from the end) and caps a frame's context at N/2 (at
     least 1, so a one-token frame still holds its anchor) and its salient count at
     N - context (budget above a cap is lost).
   Every profile also caps salient at N and context at the frame's non-salient count.
3. ATS: the top-S tokens of each frame by the ``probe`` signal are kept as they are (on
   Qwen-style towers the probe attends to the merge units' mean keys, the official signal).
4. Context anchors: the top tokens by DPC-kNN rho*delta (``density.dpc_scores``) among the
   anchor frame's non-salient tokens; one draw of tie noise per anchor frame, in temporal order,
   from a generator seeded with the input's seed.
5. DTM: every merge candidate of the segment goes to its most cosine-similar anchor of the anchor
   frame (each anchor frame aggregates the whole segment on its own, so a dropped token may fold
   into several anchors); anchor <- w anchor + (1-w) mean(assigned), w = max(beta, 1/(count+1)).
   Candidates: ``onevision``: the segment's non-salient tokens, anchors included (an anchor is
   then usually one of its own members); otherwise the segment's non-salient tokens except the
   current anchor frame's anchors.

``+fca``: r_t is VidCom2's FCA count budgets[t] instead of floor(N R): ``onevision`` splits each
frame's budgets[t] into salient and context as above and pools the segment's context onto its
anchor frames; the straightforward profiles sum budgets[t] over the segment and split the salient
share over the frames that get budget (``qwen``: the sub-runs' last frames) in proportion to
their own budgets[t], remainder to the earliest (with equal budgets: the even split above).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .density import dpc_scores
from .method import MethodInput, MethodSpec, Selection
from .plan import Merges


@dataclass(frozen=True)
class _Options:
    segments: int  # c
    tau: float
    ignore: float | None  # qwen only
    context_share: float  # d
    stride: int  # p
    beta: float
    neighbours: int  # k

    @staticmethod
    def of(inp: MethodInput) -> _Options:
        o = inp.options
        return _Options(int(o["c"]), o["tau"], o.get("ignore"), o["d"], max(1, int(o["p"])),
                        o["beta"], max(1, int(o["k"])))


@dataclass(frozen=True)
class _Budget:
    """Per-frame salient and context counts (context is non-zero on anchor frames only)."""

    salient: list[int]
    context: list[int]


def frame_similarities(features: torch.Tensor) -> torch.Tensor:
    """(T-1,) cosine between consecutive units' mean features (float32)."""
    means = features.float().mean(dim=1)
    return F.cosine_similarity(means[:-1], means[1:], dim=-1)


def segment_cuts(similarities: torch.Tensor, segments: int, tau: float) -> list[int]:
    """DySeg: sorted unique i (a segment ends after unit i) from the c-1 smallest s_i and the
    s_i below tau."""
    smallest = min(max(segments - 1, 0), similarities.numel())
    cuts = set(torch.topk(similarities, smallest, largest=False).indices.tolist())
    cuts.update(torch.nonzero(similarities < tau).flatten().tolist())
    return sorted(cuts)


def runs(first: int, last: int, cuts: list[int]) -> list[range]:
    """Contiguous ranges of [first, last] ending after each cut inside it."""
    bounds = [cut for cut in cuts if first <= cut < last] + [last]
    starts = [first] + [cut + 1 for cut in bounds[:-1]]
    return [range(start, end + 1) for start, end in zip(starts, bounds, strict=True)]


def anchor_offsets(length: int, stride: int) -> list[int]:
    """Offsets of the anchor items: those whose distance from the end is a multiple of p."""
    return list(range((length - 1) % stride, length, stride))


def split_proportional(total: int, weights: list[int]) -> list[int]:
    """floor(total w_i / sum w) each, the remainder one by one to the earliest."""
    weight_sum = sum(weights)
    if weight_sum == 0:
        weights, weight_sum = [1] * len(weights), len(weights)
    shares = [total * weight // weight_sum for weight in weights]
    for i in range(total - sum(shares)):
        shares[i] += 1
    return shares


def split_even_late(total: int, parts: int) -> list[int]:
    """total // parts each, the remainder one by one to the latest."""
    base, extra = divmod(total, parts)
    return [base + (1 if i >= parts - extra else 0) for i in range(parts)]


def per_frame_retain(inp: MethodInput) -> list[int]:
    """r_t: FCA's budgets when given, else max(1, floor(N R)) for every unit."""
    units, tokens, _ = inp.features.shape
    if inp.budgets is not None:
        return [int(b) for b in inp.budgets.tolist()]
    return [max(1, math.floor(tokens * inp.ratio))] * units


def parallel_budget(segments: list[range], retain: list[int], o: _Options, tokens: int
                    ) -> _Budget:
    """The ``onevision`` (parallel) budgets."""
    context_of = [math.floor(r * o.context_share) for r in retain]
    salient = [min(r - c, tokens) for r, c in zip(retain, context_of, strict=True)]
    context = [0] * len(retain)
    for segment in segments:
        anchors = [segment[i] for i in anchor_offsets(len(segment), o.stride)]
        share = sum(context_of[t] for t in segment) // len(anchors)
        for t in anchors:
            context[t] = min(share, tokens - salient[t])
    return _Budget(salient, context)


def straightforward_budget(segments: list[range], retain: list[int], similarities: torch.Tensor,
                           o: _Options, tokens: int, qwen: bool) -> _Budget:
    """The ``llava_video`` / ``qwen`` (straightforward) budgets."""
    salient, context = [0] * len(retain), [0] * len(retain)
    for segment in segments:
        parts = _sub_runs(segment, similarities, o.ignore) if qwen else [range(t, t + 1)
                                                                          for t in segment]
        total = sum(retain[t] for t in segment)
        segment_context = math.floor(total * o.context_share)
        if qwen:
            segment_context = max(1, segment_context)
        weights = [retain[part[-1]] for part in parts]
        for part, share in zip(parts, split_proportional(total - segment_context, weights),
                               strict=True):
            salient[part[-1]] = share
        anchors = [parts[i][-1] for i in anchor_offsets(len(parts), o.stride)]
        for t, share in zip(anchors, split_even_late(segment_context, len(anchors)),
                            strict=True):
            context[t] = share
    for t in range(len(retain)):
        if qwen:
            context[t] = min(context[t], max(1, tokens // 2))
            salient[t] = min(salient[t], tokens - context[t])
        salient[t] = min(salient[t], tokens)
        context[t] = min(context[t], tokens - salient[t])
    return _Budget(salient, context)


def _sub_runs(segment: range, similarities: torch.Tensor, ignore: float | None) -> list[range]:
    """``qwen``: the segment's runs of near-duplicates (adjacent cosine >= ignore)."""
    if ignore is None or len(segment) == 1:
        return [range(t, t + 1) for t in segment]
    inner = similarities[segment.start:segment.stop - 1]
    cuts = [segment.start + i for i in torch.nonzero(inner < ignore).flatten().tolist()]
    return runs(segment.start, segment.stop - 1, cuts)


def top_by_score(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` highest scores (ties to the lower index)."""
    return torch.argsort(-scores, stable=True)[:count]


def salient_mask(probe: torch.Tensor, salient: list[int]) -> torch.Tensor:
    """ATS: per unit, the top-S tokens by the probe attention."""
    mask = torch.zeros(probe.shape, dtype=torch.bool, device=probe.device)
    for t, count in enumerate(salient):
        mask[t, top_by_score(probe[t].float(), count)] = True
    return mask


def dtm_merges(unit_tokens: torch.Tensor, anchors: torch.Tensor, candidates: torch.Tensor,
               beta: float) -> Merges:
    """Each candidate (flat index) to its most cosine-similar anchor (flat index) by the
    L2-normalised (T*N, D) ``unit_tokens``; every anchor with members becomes
    w anchor + (1-w) mean(members), w = max(beta, 1/(count+1))."""
    cosine = unit_tokens[candidates] @ unit_tokens[anchors].T
    assigned = cosine.argmax(dim=1)
    counts = torch.bincount(assigned, minlength=anchors.numel()).float()
    keep = torch.clamp(1.0 / (counts + 1.0), min=beta)
    member_weight = (1.0 - keep) / counts.clamp(min=1.0)
    has = counts > 0
    return Merges(torch.cat([anchors[has], anchors[assigned]]),
                  torch.cat([anchors[has], candidates]),
                  torch.cat([keep[has], member_weight[assigned]]))


def _budget(inp: MethodInput, o: _Options, segments: list[range], similarities: torch.Tensor
            ) -> _Budget:
    tokens = inp.features.shape[1]
    retain = per_frame_retain(inp)
    if inp.profile == "onevision":
        return parallel_budget(segments, retain, o, tokens)
    return straightforward_budget(segments, retain, similarities, o, tokens,
                                  qwen=inp.profile == "qwen")


def _run(inp: MethodInput) -> Selection:
    o = _Options.of(inp)
    features = inp.features
    units, tokens, _ = features.shape
    probe = inp.signals.require("probe").to(features.device)
    similarities = frame_similarities(features)
    segments = runs(0, units - 1, segment_cuts(similarities, o.segments, o.tau))
    budget = _budget(inp, o, segments, similarities)
    salient = salient_mask(probe, budget.salient)
    mask = salient.clone()
    generator = torch.Generator(device="cpu").manual_seed(inp.seed)
    unit_tokens = F.normalize(features.reshape(units * tokens, -1).float(), dim=-1)
    flat_index = torch.arange(units * tokens, device=features.device).reshape(units, tokens)
    merges = []
    for segment in segments:
        pool = flat_index[segment.start:segment.stop][~salient[segment.start:segment.stop]]
        for t in (t for t in segment if budget.context[t]):
            own = torch.nonzero(~salient[t]).flatten()
            scores = dpc_scores(features[t, own], o.neighbours, generator)
            local = own[top_by_score(scores, budget.context[t])]
            mask[t, local] = True
            anchors = flat_index[t, local]
            candidates = pool if inp.profile == "onevision" else pool[~torch.isin(pool, anchors)]
            if candidates.numel():
                merges.append(dtm_merges(unit_tokens, anchors, candidates, o.beta))
    return Selection(mask, Merges.concat(merges))


_COMMON = {"c": 8.0, "d": 0.4, "p": 4.0, "beta": 0.6, "k": 4.0}

FASTVID = MethodSpec(
    name="fastvid",
    keeps="top probe-attention tokens per frame plus density anchors merged (beta-weighted) "
          "with their dynamic segment's similar tokens",
    budget="floor(N*R) per frame, split salient/context (DySeg segments)",
    run=_run,
    signals=("probe",),
    defaults={
        "onevision": {**_COMMON, "tau": 0.9},
        "llava_video": {**_COMMON, "tau": 0.9},
        "qwen": {**_COMMON, "tau": 0.84, "ignore": 0.95},
    },
    option_help={
        "c": "minimum number of DySeg segments",
        "tau": "cut between frames whose mean-feature cosine is below this",
        "ignore": "qwen: frames of a segment closer than this share one budget (near-duplicates)",
        "d": "share of the budget spent on merged context anchors",
        "p": "anchor-frame stride inside a segment",
        "beta": "minimum weight an anchor keeps of itself when merging",
        "k": "k-NN size of the DPC density",
    },
    option_bounds={"c": (1.0, math.inf), "tau": (-1.0, 1.0), "ignore": (-1.0, 1.0),
                   "d": (0.0, 1.0), "p": (1.0, math.inf), "beta": (0.0, 1.0),
                   "k": (1.0, math.inf)},
    fca="VidCom2 FCA budgets as each frame's retain r_t (split salient/context as FastVID does; "
        "straightforward profiles pool them per segment)",
    notes="Saliency is the 'probe' signal (frame mean query attention) on every profile: on "
          "Qwen-style towers it attends to each merge unit's mean key with the softmax over "
          "the units, as the official Qwen2.5-VL code computes it; on LLaVA it stands in for "
          "the SigLIP MAP-head probe, whose weights are not in HF checkpoints. The frame "
          "global feature for DySeg "
          "is the mean of the frame's features on every profile (official on Qwen; on LLaVA "
          "it replaces the MAP head's pooled vector). R is the requested ratio as per-frame "
          "retention, at least one token per frame. Fewer frames than c: every frame is its own "
          "segment (the official code assumes F >= c). Salient and context counts are capped "
          "at what a frame holds on every profile. qwen near-duplicate frames get no budget, "
          "so the kept share can fall below R.",
)
