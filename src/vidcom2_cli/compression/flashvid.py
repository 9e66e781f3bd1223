"""FlashVID (arXiv 2602.08024): ADTS token selection and TSTM tree merging in DySeg segments.

Follows the official code (Fanziyang-v/FlashVID: ``flashvid/utils.py``, ``token_selection.py``
and the published run scripts), its vision-side stage:

1. DySeg: s_i = cos(g_i, g_{i+1}) with g_t the mean of unit t's features; a cut after unit i
   for every s_i < tau, and while that gives fewer than c segments, also at the smallest
   remaining s_i (ties to the earlier unit) until it gives c (or every unit is its own).
2. Budgets per unit: B_t = ceil(N R e) (``e`` the expansion; ``+fca``: ceil(k_t e) from
   VidCom2's FCA count k_t), at most N; ADTS keeps A_t = ceil(B_t alpha) tokens, TSTM
   S_t = B_t - A_t.
3. ADTS, per unit, on the L2-normalised features: the calibrated distance
   d(i, j) = (1 - cos(x_i, x_j)) a_j [e_j], a_j the attention token j receives in the vision
   tower (``received``; the official code multiplies it by 1e6, kept here so float32 rounds
   alike) and, with ``event`` = 1, e_j = the mean over the segment's units of x_j . mean(unit)
   (event relevance). The max-min diversity problem is solved greedily: first the token whose
   second-smallest d(., j) (the smallest is itself) is largest, then repeatedly the token whose
   smallest d(s, j) over the chosen s is largest (ties to the lower index).
4. TSTM, per segment, over the tokens ADTS left: every such token of unit t >= 1 of the segment
   links to its most cosine-similar such token of unit t-1 when the cosine exceeds
   ``temporal``; if that leaves fewer than sum(B_t) tokens (ADTS ones included) unlinked, the
   threshold drops to the (F N - sum B_t)-th largest best cosine (only those above it link).
   Links form redundancy trees rooted at unlinked tokens. A tree becomes one token at its
   root: the sum of its tokens divided by 1 + the root's number of direct children, which is
   what the official code computes (the mean when no linked token has children of its own).
5. Spatial merge, per unit: with S = sum(S_t) over the segment and M the roots there, a unit with
   m roots keeps ceil(m S / M) DPC-kNN centres (``density.dpc_scores``, k = min(K, centres);
   the highest scores, ties to the lower index) of its root tokens when S < M; every root goes
   to its nearest centre (Euclidean), and a centre's token becomes the mean of its roots'
   tokens. When S >= M every root is kept.
6. Output: the ADTS tokens as they are and the merged tokens at their centres' places, in
   original order; every merge is linear, so it is written down to the original tokens.

Assumptions where the official code stops or breaks (each said in the spec's notes):
- The official runs keep ceil(1.25 N R) tokens per unit before the language model and prune
  70% (Qwen3-VL: 90%) of the visual tokens at decoder layer 20 (Qwen3-VL: 28) by the last
  prompt token's attention, so that the layer-averaged retention is R. Here the expansion
  defaults to 1 and the in-LLM stage is off (``llm_keep`` = 1), so the tokens sent are about R,
  as for every other method; ``expansion=1.25`` with ``llm_keep=0.3`` (Qwen3-VL: also
  ``llm_layer=28``, ``llm_keep=0.1``) runs the official setting.

In-LLM stage (``LLMPrune``, run by the decoder loop of ``models.decoder_loop``), as the official
``fastv_prune``: at the input of layer K (0-based) in the prefill, the attention of the last
prompt token at layer K-1 (mean over heads) over the visual tokens; the top
ceil(n ``llm_keep``) stay, unchanged, at their original positions; layers >= K see only them.
Per batch row (the official code reads row 0's span); at least one token kept.
- A one-unit segment's TSTM candidates are its non-ADTS tokens (the official code also feeds its
  ADTS tokens to the clustering, so one token can come out twice).
- A token is never chosen twice by ADTS (the official ``attn_div_v2`` loop does not mask the
  chosen ones; with exact duplicates it can pick one again).
- Fewer units than c: every unit is its own segment (the official complementary cut then
  repeats cuts and fails on the empty segments).
- The DPC tie noise comes from a generator seeded with the input's seed, one draw per unit with
  roots to cluster, in temporal order (the official code uses torch's global generator).
- A plan's merges apply to every per-token tensor of a family, Qwen3-VL's deepstack features
  included (the official code gathers those at the kept tokens without merging).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .density import dpc_scores
from .fastvid import runs
from .inllm import InLLMStage, PrefillStage, SpanReduction, VisualSpan
from .method import MethodInput, MethodSpec, Selection
from .plan import Merges

ATTENTION_SCALE = 1e6  # the official code's scale on the attention (see the module docstring)
SOFT_FLOOR = -1.0 + 1e-6  # the lowest threshold the official lower-bound rule sets


@dataclass(frozen=True)
class _Options:
    segments: int  # c
    tau: float
    alpha: float
    temporal: float
    event: bool
    expansion: float
    neighbours: int  # K

    @staticmethod
    def of(inp: MethodInput) -> _Options:
        o = inp.options
        return _Options(int(o["c"]), o["tau"], o["alpha"], o["temporal"], bool(o["event"]),
                        o["expansion"], max(1, int(o["K"])))


def transition_similarities(features: torch.Tensor) -> torch.Tensor:
    """(T-1,) float32 cosine between consecutive units' mean features."""
    means = F.normalize(features.float().mean(dim=1), dim=-1)
    return (means[:-1] * means[1:]).sum(dim=-1)


def segment_cuts(similarities: torch.Tensor, segments: int, tau: float) -> list[int]:
    """DySeg with the complementary cut: sorted i (a segment ends after unit i) for every
    s_i < tau, plus the smallest other s_i (ties to the lower i) until there are c segments."""
    below = similarities < tau
    cuts = below.nonzero().flatten().tolist()
    others = (~below).nonzero().flatten()
    order = torch.argsort(similarities[others], stable=True)
    extra = others[order[:max(0, segments - 1 - len(cuts))]].tolist()
    return sorted(cuts + extra)


def unit_budgets(inp: MethodInput, expansion: float) -> list[int]:
    """B_t: ceil(N R e) per unit, or ceil(k_t e) from the FCA counts; at most N."""
    units, tokens, _ = inp.features.shape
    if inp.budgets is not None:
        return [min(tokens, math.ceil(int(k) * expansion)) for k in inp.budgets.tolist()]
    return [min(tokens, math.ceil(tokens * inp.ratio * expansion))] * units


def calibrated_distance(x: torch.Tensor, unit_tokens: torch.Tensor, received: torch.Tensor,
                        event: bool) -> torch.Tensor:
    """(F, N, N) ADTS distances of one segment: [f, i, j] = (1 - cos) * a_j (* e_j), from its
    float32 features ``x`` (F, N, D), their L2-normalised ``unit_tokens`` and ``received``."""
    distance = 1.0 - unit_tokens @ unit_tokens.transpose(1, 2)
    distance = distance * (received.float() * ATTENTION_SCALE)[:, None, :]
    if event:
        relevance = (x @ x.mean(dim=1).T).mean(dim=-1)  # x_j . mean(unit), mean over units
        distance = distance * relevance[:, None, :]
    return distance


def max_min_selection(distance: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Greedy calibrated max-min diversity: (F, N) mask of counts[f] tokens per unit.

    ``distance`` (F, N, N), [f, s, j]: how far token j lies from a chosen token s. The greedy
    order of a larger count starts with the smaller count's choice, so one pass of max(counts)
    steps serves every unit.
    """
    units, tokens, _ = distance.shape
    chosen = torch.zeros(units, tokens, dtype=torch.bool, device=distance.device)
    steps = max(counts, default=0)
    if steps == 0:
        return chosen
    if tokens > 1:
        nearest = distance.topk(2, dim=1, largest=False).values[:, 1, :]
    else:
        nearest = distance[:, 0, :]
    wanted = torch.tensor(counts, device=distance.device)
    rows = torch.arange(units, device=distance.device)
    pick = nearest.argmax(dim=1)
    closest = distance[rows, pick]  # smallest distance of each token to a chosen one
    for step in range(steps):
        active = wanted > step
        chosen[rows[active], pick[active]] = True
        if step + 1 == steps:
            break
        pick = closest.masked_fill(chosen, -math.inf).argmax(dim=1)
        closest = torch.minimum(closest, distance[rows, pick])
    return chosen


@dataclass(frozen=True)
class Trees:
    """TSTM's redundancy trees over one segment, indexed flat over its (F, N) tokens."""

    members: torch.Tensor  # (M,) int64: the tokens in trees (those ADTS left), ascending
    roots: torch.Tensor  # (R,) int64: the tokens that link to nothing, ascending
    tree: torch.Tensor  # (M,) int64: the row in ``roots`` of each member's root
    weight: torch.Tensor  # (R,) float32: 1 / (1 + the root's direct children)


def redundancy_trees(unit_tokens: torch.Tensor, candidates: torch.Tensor, threshold: float,
                     lower_bound: int) -> Trees:
    """Step 4 on one segment's L2-normalised (F, N, D) tokens; ``candidates`` (F, N) are the
    tokens ADTS left; ``lower_bound`` = sum(B_t), the least number of tokens to leave unlinked
    (ADTS tokens included)."""
    units, tokens, _ = unit_tokens.shape
    best = torch.full((units, tokens), -1.0, device=unit_tokens.device)
    anchor = torch.zeros(units, tokens, dtype=torch.long, device=unit_tokens.device)
    for t in range(1, units):
        cosine = unit_tokens[t] @ unit_tokens[t - 1].T
        cosine[~candidates[t]] = -1.0
        cosine[:, ~candidates[t - 1]] = -1.0
        best[t], anchor[t] = cosine.max(dim=1)
    links = best > threshold
    if int((~links).sum()) < lower_bound:
        surplus = units * tokens - lower_bound
        if surplus <= 0:
            links = torch.zeros_like(links)
        else:
            soft = max(float(best.flatten().topk(surplus).values[-1]), SOFT_FLOOR)
            links = best > soft
    flat = torch.arange(units * tokens, device=unit_tokens.device).reshape(units, tokens)
    root = flat.clone()
    for t in range(1, units):
        root[t] = torch.where(links[t], root[t - 1][anchor[t]], flat[t])
    parents = (anchor + (flat // tokens - 1) * tokens)[links]
    children = torch.bincount(parents, minlength=units * tokens).float()
    members = candidates.flatten().nonzero().squeeze(1)
    roots = (candidates & ~links).flatten().nonzero().squeeze(1)
    row = torch.empty(units * tokens, dtype=torch.long, device=unit_tokens.device)
    row[roots] = torch.arange(roots.numel(), device=unit_tokens.device)
    return Trees(members=members, roots=roots, tree=row[root.flatten()[members]],
                 weight=1.0 / (1.0 + children[roots]))


def tree_tokens(x: torch.Tensor, trees: Trees) -> torch.Tensor:
    """(R, D): the token each tree becomes, from the segment's (F*N, D) float32 tokens."""
    sums = torch.zeros(trees.roots.numel(), x.shape[1], device=x.device)
    return sums.index_add_(0, trees.tree, x[trees.members]) * trees.weight[:, None]


@dataclass(frozen=True)
class Clusters:
    """Step 5's outcome over one segment's roots: each root's kept token and cluster size."""

    owner: torch.Tensor  # (roots,) int64 flat index of the kept token the root merges into
    size: torch.Tensor  # (roots,) float32 roots in that token


def spatial_clusters(roots: torch.Tensor, values: torch.Tensor, tokens: int, budget: int,
                     neighbours: int, generator: torch.Generator) -> Clusters:
    """Step 5: per unit, ceil(m budget / roots) DPC-kNN centres of its m roots' tokens (every
    root its own when budget >= roots), each root joining its nearest centre."""
    owner, size = roots.clone(), torch.ones(roots.numel(), device=roots.device)
    share = budget / roots.numel()
    if share >= 1.0:
        return Clusters(owner, size)
    units = roots // tokens
    for unit in torch.unique(units).tolist():
        rows = (units == unit).nonzero().squeeze(1)
        clusters = math.ceil(rows.numel() * share)
        points = values[rows]
        scores = dpc_scores(points, min(clusters, neighbours), generator)
        centres = torch.argsort(scores, descending=True, stable=True)[:clusters]
        nearest = torch.cdist(points, points[centres],
                              compute_mode="donot_use_mm_for_euclid_dist").argmin(dim=1)
        nearest[centres] = torch.arange(clusters, device=roots.device)
        owner[rows] = roots[rows[centres]][nearest]
        size[rows] = torch.bincount(nearest, minlength=clusters).float()[nearest]
    return Clusters(owner, size)


def _segment(inp: MethodInput, o: _Options, segment: range, budgets: list[int],
             generator: torch.Generator) -> tuple[torch.Tensor, Merges | None]:
    """Steps 3-6 on one segment: its (F, N) keep-mask and its merges (flat over the video)."""
    x = inp.features[segment.start:segment.stop].float()
    units, tokens, _ = x.shape
    unit_tokens = F.normalize(x, dim=-1)
    received = inp.signals.require("received")[segment.start:segment.stop].to(x.device)
    own = [budgets[t] for t in segment]
    adts = [math.ceil(b * o.alpha) for b in own]
    mask = max_min_selection(calibrated_distance(x, unit_tokens, received, o.event), adts)
    tstm = sum(own) - sum(adts)
    if tstm == 0:
        return mask, None
    trees = redundancy_trees(unit_tokens, ~mask, o.temporal, sum(own))
    values = tree_tokens(x.reshape(units * tokens, -1), trees)
    clusters = spatial_clusters(trees.roots, values, tokens, tstm, o.neighbours, generator)
    mask.view(-1)[clusters.owner] = True
    # every tree member merges into its root's kept token with its root's weight
    targets = clusters.owner[trees.tree]
    weights = trees.weight[trees.tree] / clusters.size[trees.tree]
    alone = torch.bincount(targets, minlength=units * tokens)[targets] == 1
    keep = ~(alone & (targets == trees.members))  # a token merged with nothing is no merge
    offset = segment.start * tokens
    return mask, Merges(targets[keep] + offset, trees.members[keep] + offset, weights[keep])


def _run(inp: MethodInput) -> Selection:
    o = _Options.of(inp)
    units = inp.features.shape[0]
    inp.signals.require("received")
    cuts = segment_cuts(transition_similarities(inp.features), o.segments, o.tau)
    budgets = unit_budgets(inp, o.expansion)
    generator = torch.Generator(device="cpu").manual_seed(inp.seed)
    masks, parts = [], []
    for segment in runs(0, units - 1, cuts):
        mask, merges = _segment(inp, o, segment, budgets, generator)
        masks.append(mask)
        if merges is not None:
            parts.append(merges)
    return Selection(torch.cat(masks), Merges.concat(parts))


def attention_prune(attention: torch.Tensor, keep: float) -> torch.Tensor:
    """The in-LLM stage's choice on one sequence: ascending indices of the top ceil(n keep)
    visual tokens (at least one) by the attention the last prompt token paid them."""
    count = attention.shape[0]
    kept = min(count, max(1, math.ceil(count * keep)))
    return torch.topk(attention.float(), kept).indices.sort().values


@dataclass(frozen=True)
class LLMPrune(PrefillStage):
    """FlashVID's in-LLM stage at layer ``layer``: the ``keep`` share of the visual tokens most
    attended by the last prompt token stays, unchanged (FastV style)."""

    keep: float

    @property
    def name(self) -> str:
        return f"prune@{self.layer}"

    def reduce(self, span: VisualSpan) -> SpanReduction:
        kept = attention_prune(span.attention, self.keep)
        return SpanReduction(kept, span.hidden[kept])


def _stages(options: dict[str, float]) -> tuple[InLLMStage, ...]:
    if options["llm_keep"] >= 1.0:
        return ()
    return (LLMPrune(int(options["llm_layer"]), options["llm_keep"]),)


_LLAVA = {"c": 8.0, "tau": 0.9, "alpha": 0.7, "temporal": 0.8, "event": 1.0, "expansion": 1.0,
          "K": 7.0, "llm_layer": 20.0, "llm_keep": 1.0}

FLASHVID = MethodSpec(
    name="flashvid",
    keeps="attention-calibrated max-min diverse tokens per frame (ADTS), plus redundancy trees "
          "linked across frames, each one token, DPC-clustered per frame (TSTM)",
    budget="ceil(N*R) per frame, alpha ADTS : 1-alpha TSTM (DySeg segments)",
    run=_run,
    signals=("received",),
    defaults={"onevision": _LLAVA, "llava_video": _LLAVA,
              "qwen": {**_LLAVA, "c": 4.0, "event": 0.0}},
    option_help={
        "c": "minimum number of DySeg segments",
        "tau": "cut between frames whose mean-feature cosine is below this",
        "alpha": "share of each frame's budget chosen by ADTS; the rest goes to TSTM",
        "temporal": "a token links to its most similar token of the previous frame above "
                    "this cosine (TSTM)",
        "event": "1: ADTS also weighs tokens by event relevance (official on LLaVA), 0: by "
                 "attention only (official on Qwen)",
        "expansion": "budget factor before the language model (the official runs use 1.25 "
                     "with the in-LLM stage, llm_keep)",
        "K": "k-NN size of the DPC density, used as min(K, number of centres)",
        "llm_layer": "decoder layer (0-based) at whose input the in-LLM stage prunes, reading "
                     "the layer before's attention (official 20; Qwen3-VL 28)",
        "llm_keep": "share of the visual tokens the in-LLM stage keeps by the last prompt "
                    "token's attention (official 0.3, Qwen3-VL 0.1, with expansion=1.25; 1, "
                    "the default, turns the stage off)",
    },
    option_bounds={"c": (1.0, math.inf), "tau": (-1.0, 1.0), "alpha": (0.0, 1.0),
                   "temporal": (-1.0, 1.0), "expansion": (1e-3, math.inf), "K": (1.0, math.inf),
                   "llm_layer": (1.0, math.inf), "llm_keep": (1e-3, 1.0)},
    option_choices={"event": (0.0, 1.0)},
    fca="VidCom2 FCA budgets as each frame's budget, split alpha : 1-alpha as FlashVID does",
    notes="The official runs keep ceil(1.25*N*R) tokens per frame and prune 70% of them at "
          "LLM layer 20 (Qwen3-VL: 90% at layer 28) so that R is the layer average; by default "
          "here expansion=1 and the in-LLM stage is off, so the tokens sent are about R (a "
          "little more: budgets and cluster counts round up), as for every method; "
          "expansion=1.25 with llm_keep=0.3 (Qwen3-VL: llm_layer=28, llm_keep=0.1) is the "
          "official setting (refused on Qwen3.5, whose language model is not a full-attention "
          "stack). Attention is the tower's attention received "
          "(the official signal on LLaVA-OV/Video, Qwen2.5-VL and Qwen3-VL; other families "
          "read their own feature layer the same way). A tree's token is its sum over "
          "1 + the root's direct children, as the official code computes it. Qwen3-VL's "
          "deepstack features are merged like the tokens (the official code gathers them "
          "unmerged). Fixes: a one-frame segment clusters only the tokens ADTS left; no token "
          "is chosen twice; fewer frames than c: one segment per frame; seeded DPC tie noise.",
    llm_stages=_stages,
)
