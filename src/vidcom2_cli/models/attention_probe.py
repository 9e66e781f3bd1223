"""The attention an in-LLM stage reads: the last query token's, recorded inside one layer.

An attention function registered with transformers' ``AttentionInterface`` calls the model's
own implementation and also computes the last query's row as eager attention does (softmax in
float32, cast to the query dtype), mean over heads. ``recording_attention`` selects it for the
layers sharing a config, for as long as the block runs; ``DecoderLoop`` uses it for the one
layer a stage reads.
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

_PROBE_PREFIX = "vidcom2_last_query:"
_recording: contextvars.ContextVar[list[torch.Tensor] | None] = contextvars.ContextVar(
    "vidcom2_last_query", default=None)


def _probe_name(model_implementation: str) -> str:
    """The name of the recording attention function wrapping ``model_implementation``,
    registered on first use."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    name = _PROBE_PREFIX + model_implementation
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _make_probe(model_implementation))
    return name


def _make_probe(model_implementation: str) -> Any:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def probe(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
              value: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs: Any) -> Any:
        if model_implementation == "eager":
            # each modeling file defines its own (identical) eager function
            base = sys.modules[type(module).__module__].eager_attention_forward
        else:
            base = ALL_ATTENTION_FUNCTIONS[model_implementation]
        output = base(module, query, key, value, attention_mask, **kwargs)
        sink = _recording.get()
        if sink is not None:
            sink.append(last_query_attention(query, key, attention_mask,
                                             kwargs.get("scaling")))
        return output
    return probe


def last_query_attention(query: torch.Tensor, key: torch.Tensor,
                         attention_mask: torch.Tensor | None, scaling: float | None
                         ) -> torch.Tensor:
    """(B, K) attention of the last query over the keys, mean over heads, computed as eager
    attention does: scores in the query dtype, the mask added, softmax in float32 cast back."""
    heads, kv_heads = query.shape[1], key.shape[1]
    keys = key.repeat_interleave(heads // kv_heads, dim=1) if heads != kv_heads else key
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query[:, :, -1:], keys.transpose(2, 3)) * scale  # (B, H, 1, K)
    if attention_mask is not None:
        if attention_mask.dim() == 2:  # flash attention's 2-D padding mask
            row = attention_mask[:, None, None, :].bool()
        else:
            row = attention_mask[:, :, -1:, -keys.shape[2]:]
        if row.dtype == torch.bool:
            scores = scores.masked_fill(~row, torch.finfo(scores.dtype).min)
        else:
            scores = scores + row
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return weights[:, :, 0].mean(dim=1)


@contextmanager
def recording_attention(config: Any) -> Iterator[list[torch.Tensor]]:
    """Within: the layers sharing ``config`` record their last query's attention."""
    implementation = config._attn_implementation
    sink: list[torch.Tensor] = []
    token = _recording.set(sink)
    config._attn_implementation = _probe_name(implementation)
    try:
        yield sink
    finally:
        config._attn_implementation = implementation
        _recording.reset(token)
