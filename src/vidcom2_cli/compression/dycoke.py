"""DyCoke's temporal token merging (TTM, arXiv 2411.15024), with budgets that reach R.

The official TTM (docs/METHODS.md section 4) works in windows of 4 frames {i..i+3}: frame i is
kept whole (the pivot), i+1 and i+2 keep their positions least similar (same-position cosine) to
the original frame i, and i+3 those least similar to the original frame i+2; pruned tokens are
dropped. Its keep count is floor((1-K) N) per pruned frame with the pivots always whole, so it
cannot go below about R = 0.25 (and keeps about 49% at K = 0.7).

Here the structure and the criterion stay, and the counts come from R so the tokens sent reach
it (an equal-token comparison), with at least one token in every frame (as every method here):
- total budget B = max(T, round(R T N));
- when the pivots fit beside one token for every pruned frame (P N + T - P <= B): pivots whole,
  the rest B - P N split evenly over the pruned frames (remainder to the earliest), i.e.
  K = 1 - keep/N is derived from R, not an option;
- otherwise every pruned frame keeps its one least similar position and the pivots share the
  rest B - (T - P) evenly (remainder to the earliest), each keeping its positions least similar
  to the next frame (the previous frame for a last pivot; a lone frame keeps evenly spaced
  positions) -- the same temporal-redundancy criterion.
Fixes of the official quirks: every frame takes part (an odd F's last frame is not dropped, and
the last window is pruned like the others, so frame i+2 of it is not kept whole); kept tokens
keep spatial order. Stage 2 (decode-time KV pruning) is not part of a token selection.

``+fca``: frame t keeps FCA's budgets[t] tokens, chosen by the same criterion (pruned frames
against their reference, pivots against the next frame).

Stage 2, dynamic KV pruning while decoding (``KVPruning``, run by ``models.decoder_loop``), as
the official ``PrunableDynamicCache``: at every decoding step, the attention of the new token at
layer L-1 (mean over heads) over the cached visual entries; when its cosine with the previous
step's vector is below 0.9 (always at the first step), layers >= L attend only to the top
floor(n (1 - P)) visual entries (and every other entry) at this step; otherwise they attend to
everything. The cache is never shrunk; prefill is not touched. Official defaults (lmms-eval):
L = 3, P = 0.8. Differences: per batch row (the official code reads row 0), and the previous
vector starts empty for each answer (the official one carries over from the previous sample).
The visual span is every video placeholder token (LLaVA-OneVision's one newline included; the
official span stops before it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .baselines import evenly_spaced_mask
from .inllm import DecodeStage, InLLMStage
from .method import MethodInput, MethodSpec, Selection
from .vidcom2 import keep_lowest

WINDOW = 4


def reference_frame(frame: int) -> int | None:
    """The frame a unit is pruned against: None for a pivot (first of a window of 4)."""
    offset = frame % WINDOW
    if offset == 0:
        return None
    return frame - 2 if offset == 2 else frame - 1


def redundancy(features: torch.Tensor) -> torch.Tensor:
    """(T, N) same-position cosine of each token with its frame's reference (pivots: with the
    next frame, or the previous one for a last pivot); needs T >= 2."""
    units = features.shape[0]
    x = features.float()
    partners = []
    for t in range(units):
        reference = reference_frame(t)
        if reference is None:
            reference = t + 1 if t + 1 < units else t - 1
        partners.append(reference)
    return F.cosine_similarity(x, x[partners], dim=-1)


def split_even(total: int, parts: int) -> list[int]:
    """total // parts each, the remainder one by one to the earliest."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def ttm_counts(units: int, tokens: int, ratio: float) -> torch.Tensor:
    """Per-frame kept counts reaching max(T, round(R T N)), at least one per frame: pivots
    whole while they fit beside one token for every pruned frame."""
    budget = max(units, round(ratio * units * tokens))
    pivots = [t for t in range(units) if reference_frame(t) is None]
    pruned = [t for t in range(units) if reference_frame(t) is not None]
    counts = torch.ones(units, dtype=torch.long)
    if pruned and len(pivots) * tokens + len(pruned) <= budget:
        counts[pivots] = tokens
        shares = split_even(budget - len(pivots) * tokens, len(pruned))
        counts[pruned] = torch.tensor(shares).clamp(max=tokens)
    else:
        shares = split_even(budget - len(pruned), len(pivots))
        counts[pivots] = torch.tensor(shares).clamp(max=tokens)
    return counts


def _run(inp: MethodInput) -> Selection:
    features = inp.features
    units, tokens, _ = features.shape
    counts = inp.budgets if inp.budgets is not None else ttm_counts(units, tokens, inp.ratio)
    counts = counts.to(features.device)
    if units == 1:
        return Selection(evenly_spaced_mask(tokens, counts))
    return Selection(keep_lowest(redundancy(features), counts))


def prune_kv(attention: torch.Tensor, previous: torch.Tensor | None, share: float,
             threshold: float) -> torch.Tensor | None:
    """Stage 2 at one step: ascending indices of the visual entries to attend, or None (all)
    when the attention moved little since the last step (cosine at least ``threshold``)."""
    similarity = 0.0
    if previous is not None and previous.numel() == attention.numel():
        similarity = float(F.cosine_similarity(attention.float(), previous.float(), dim=0))
    if similarity >= threshold:
        return None
    keep = int(attention.numel() * (1.0 - share))
    return torch.topk(attention.float(), keep).indices.sort().values


@dataclass(frozen=True)
class KVPruning(DecodeStage):
    """DyCoke's decode-time KV pruning at layer ``layer``: ``share`` P of the visual entries
    skipped at a step whose attention moved (cosine below ``threshold``)."""

    share: float
    threshold: float

    @property
    def name(self) -> str:
        return f"kv-prune@{self.layer}"

    def attend(self, attention: torch.Tensor, previous: torch.Tensor | None
               ) -> torch.Tensor | None:
        return prune_kv(attention, previous, self.share, self.threshold)


def _stages(options: dict[str, float]) -> tuple[InLLMStage, ...]:
    if options["kv_prune"] <= 0:
        return ()
    return (KVPruning(int(options["kv_layer"]), options["kv_prune"], options["kv_threshold"]),)


_DEFAULTS = {"kv_layer": 3.0, "kv_prune": 0.8, "kv_threshold": 0.9}

DYCOKE = MethodSpec(
    name="dycoke",
    keeps="tokens least like the same position in the window's reference frame (TTM; drops "
          "only)",
    budget="round(R*T*N) in all, at least 1 per frame: pivot frames whole while they fit, "
           "the rest over the pruned frames",
    run=_run,
    fca="VidCom2 FCA budgets per frame, chosen by TTM's temporal redundancy",
    defaults={"onevision": _DEFAULTS, "llava_video": _DEFAULTS,
              "qwen": {**_DEFAULTS, "kv_prune": 0.0}},
    option_help={
        "kv_layer": "decoder layer (0-based) from which decoding steps attend a subset of the "
                    "visual KV entries, chosen by the layer before's attention (official 3)",
        "kv_prune": "share of the visual KV entries a pruned decoding step skips (official "
                    "0.8 on LLaVA; 0 turns decode-time pruning off, the qwen default)",
        "kv_threshold": "a step keeps attending everything when its attention's cosine with "
                        "the previous step's is at least this (official 0.9)",
    },
    option_bounds={"kv_layer": (1.0, math.inf), "kv_prune": (0.0, 1.0),
                   "kv_threshold": (-1.0, 1.0)},
    llm_stages=_stages,
    notes="Decode-time KV pruning (stage 2) runs by default on LLaVA (the official family) and "
          "is off on the qwen profile (kv_prune > 0 turns it on where the language model is a "
          "full-attention stack; refused on Qwen3.5). TTM: K is derived from R so that the "
          "tokens sent reach R: pivots stay whole while round(R*T*N) allows (with one token "
          "left for every pruned frame), otherwise pruned frames keep one token each and "
          "pivots share the rest, keeping the positions least similar to the next frame. Every "
          "frame takes part (the official code drops an odd F's last frame and skips the last "
          "window); kept tokens keep spatial order.",
)
