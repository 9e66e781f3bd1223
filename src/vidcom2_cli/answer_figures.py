"""The figures an answer reports: each stage's time, and the tokens kept, reused and generated.

``answer_timing`` turns the stage times measured before the language model and a generate
call's own timing into the ``timing_ms`` an ``Answer`` carries; ``token_counts`` the prompt,
plan and result into its ``TokenCounts``.
"""

from __future__ import annotations

from .compression import KeepPlan
from .models.items import CompressedItem, PreparedItem
from .models.loop_state import LLMTokens
from .timing import GenerationTiming
from .work import TokenCounts

# The stages every answer reports, in pipeline order; their sum is ``total``.
STAGES = ("feature_cache", "video_decode", "preprocess", "vision", "compress", "prefill",
          "decode")


def answer_timing(stages_ms: dict[str, float], generation: GenerationTiming) -> dict[str, float]:
    """An answer's ``timing_ms``: ``stages_ms`` has the times before prefill (stages this
    answer does not carry count 0), ``generation`` those of its generate call."""
    timing = {stage: stages_ms.get(stage, 0.0) for stage in STAGES[:5]}
    timing["prefix_prefill"] = stages_ms.get("prefix_prefill", 0.0)
    timing["prefill"] = timing["prefix_prefill"] + generation.prefill_ms
    timing["decode"] = generation.decode_ms
    timing["decode_per_token"] = generation.decode_ms_per_token
    timing["llm_generation"] = timing["prefill"] + timing["decode"]
    timing["total"] = sum(timing[stage] for stage in STAGES)
    return timing


def token_counts(item: PreparedItem, plan: KeepPlan, compressed: CompressedItem,
                 generated: int, prefix_reused: int = 0, prefix_tokens: int = 0,
                 llm: LLMTokens | None = None) -> TokenCounts:
    visual_full = int(item.video_token_mask.sum())
    return TokenCounts(
        visual_full=visual_full,
        visual_kept=visual_full - (plan.total_full - plan.total_kept),
        per_frame_kept=plan.counts,
        visual_structural=visual_full - plan.total_full,
        prompt_full=item.length,
        prompt_kept=compressed.length,
        generated=generated,
        prefix_reused=prefix_reused,
        prefix_tokens=prefix_tokens,
        llm=llm,
    )
