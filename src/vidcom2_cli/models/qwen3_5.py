"""Qwen3.5 and Qwen3.5-MoE: Qwen3-VL's vision side (no deepstack) on a hybrid language model.

Three of every four language layers are Gated DeltaNet (linear attention): besides keys and
values, the cache holds a convolution state and a recurrent state per layer. Everything Qwen3-VL
does carries over (M-RoPE positions from the model's own ``get_rope_index``, sliced; timestamps
in the prompt; the encoder output sliced with the keep-mask). What differs is reuse: a copy of a
prefilled prefix carries the recurrent state too (``copy.deepcopy``, rows picked with
``reorder_cache``), but a pad token between the prefix and a question would still decay that
state, so questions about a cached prefix are answered without padding inside the sequence
(``pads_inside_are_neutral`` is False: one generate call per question length).
"""

from __future__ import annotations

from typing import Any

from .qwen_vl import QwenVLAdapter


class Qwen3_5Adapter(QwenVLAdapter):
    @property
    def chat_template_options(self) -> dict[str, Any]:
        """Answer directly: Qwen3.5's template opens a ``<think>`` block after the generation
        prompt unless ``enable_thinking`` is false (then the block comes closed and empty).
        Reasoning first would spend the answer's token budget, and the token savings measured
        here are for answers, not reasoning traces."""
        return {"enable_thinking": False}

    @property
    def pads_inside_are_neutral(self) -> bool:
        layer_types = getattr(self.model.config.get_text_config(), "layer_types", None) or ()
        return all(kind == "full_attention" for kind in layer_types)
