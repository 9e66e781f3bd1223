"""Vision-tower signals for the methods that need them, read with a forward pre-hook.

A hook on ONE attention module of the vision tower sees that module's inputs on the way in and
recomputes its queries and keys from the module's own projections (and rotary embedding, for
the Qwen-style towers). Nothing in transformers is replaced, the tower's output is untouched,
and the hook is removed when the ``probe`` context ends. The tower runs as usual with SDPA or
FlashAttention; only the probed layer's attention is recomputed, one chunk (frame) and one head
at a time, in float32.

Per chunk (one frame of a SigLIP/CLIP/InternViT tower, one temporal unit of a Qwen-style tower)
the probe records, for each token:

- ``received``: the attention it receives, averaged over heads and over every query;
- ``probe``: the attention from the chunk's mean query (mean over heads), a stand-in for a
  pooling head's probe query. Where the family merges runs of consecutive patches into one
  token (Qwen-style towers), the keys are averaged over each run first and the softmax is
  taken over the runs, which is how FastVID's official Qwen2.5-VL code computes it; every
  patch of a run then carries its run's value;
- ``keys``: its key vector averaged over heads.

The adapter then pools these per-patch values onto the feature grid the way the family pools
its features (``VideoAdapter.pool_signals``).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..compression import SIGNALS


@dataclass
class SignalLayer:
    """Which attention module to probe, how many leading tokens of each chunk are not
    patches (a CLS token the features drop) and how many consecutive patches the family merges
    into one token after the tower (1 where it pools spatially instead)."""

    module: torch.nn.Module
    prefix_tokens: int = 0
    merge_unit: int = 1


@dataclass
class ChunkSignals:
    """What the probe recorded, one entry per chunk in the order the tower ran them."""

    received: list[torch.Tensor] = field(default_factory=list)  # (n,)
    probe: list[torch.Tensor] = field(default_factory=list)  # (n,)
    keys: list[torch.Tensor] = field(default_factory=list)  # (n, head_dim)

    def stacked(self, name: str) -> torch.Tensor:
        """(chunks, n) or (chunks, n, head_dim): every chunk has the same size in a video."""
        values = getattr(self, name)
        if not values:
            raise RuntimeError("the vision tower never reached the probed layer")
        return torch.stack(values)


def attention_modules(tower: torch.nn.Module) -> list[torch.nn.Module]:
    """The tower's self-attention modules in layer order: those with a fused ``qkv`` or with
    ``q_proj`` and ``k_proj`` projections."""
    return [module for module in tower.modules()
            if isinstance(getattr(module, "qkv", None), torch.nn.Linear)
            or (isinstance(getattr(module, "q_proj", None), torch.nn.Linear)
                and isinstance(getattr(module, "k_proj", None), torch.nn.Linear))]


def _heads(module: torch.nn.Module) -> int:
    return int(getattr(module, "num_heads", None) or module.config.num_attention_heads)


def _scale(module: torch.nn.Module, head_dim: int) -> float:
    for name in ("scaling", "scale"):
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    return head_dim ** -0.5


def _fused_chunks(module: torch.nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Qwen-style: one (tokens, C) sequence, a fused qkv, vision rotary embeddings and
    ``cu_seqlens`` chunk boundaries."""
    heads = _heads(module)
    length = hidden.shape[0]
    query, key, _ = module.qkv(hidden).reshape(length, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
    rotary = kwargs.get("position_embeddings")
    if rotary is not None:
        # the module's own rotary function, from the module that defines it
        apply_rotary = sys.modules[type(module).__module__].apply_rotary_pos_emb_vision
        query, key = apply_rotary(query, key, *rotary)
    bounds = kwargs.get("cu_seqlens")
    edges = [0, length] if bounds is None else [int(value) for value in bounds.tolist()]
    for start, end in itertools.pairwise(edges):
        yield query[start:end].transpose(0, 1), key[start:end].transpose(0, 1)


def _split_chunks(module: torch.nn.Module, hidden: torch.Tensor
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """SigLIP/CLIP/InternViT-style: a (frames, tokens, C) batch, separate projections (and
    InternViT's optional q/k norms)."""
    heads = _heads(module)
    query, key = module.q_proj(hidden), module.k_proj(hidden)
    query = getattr(module, "q_norm", torch.nn.Identity())(query)
    key = getattr(module, "k_norm", torch.nn.Identity())(key)
    frames, tokens, _ = hidden.shape
    query = query.reshape(frames, tokens, heads, -1).transpose(1, 2)
    key = key.reshape(frames, tokens, heads, -1).transpose(1, 2)
    yield from zip(query, key, strict=True)


def chunk_signals(query: torch.Tensor, key: torch.Tensor, scale: float, prefix: int,
                  wanted: frozenset[str], merge_unit: int = 1) -> dict[str, torch.Tensor]:
    """The signals of one chunk from its (heads, n, d) queries and keys, float32, for the
    patch tokens (those after ``prefix``); ``merge_unit`` > 1: the probe attends to the mean
    key of each run of that many consecutive patches (see the module docstring)."""
    query, key = query.float(), key.float()
    heads, tokens, _ = query.shape
    out: dict[str, torch.Tensor] = {}
    if "received" in wanted:
        received = torch.zeros(tokens, dtype=torch.float32, device=query.device)
        for head in range(heads):  # one (n, n) map at a time bounds the memory
            received += torch.softmax(query[head] @ key[head].T * scale, dim=-1).mean(dim=0)
        out["received"] = (received / heads)[prefix:]
    if "probe" in wanted:
        mean_query = query[:, prefix:].mean(dim=1, keepdim=True)  # (heads, 1, d)
        if merge_unit == 1:
            weights = torch.softmax(mean_query @ key.transpose(1, 2) * scale, dim=-1)
            out["probe"] = weights.mean(dim=0)[0, prefix:]
        else:
            patches = key[:, prefix:]
            units = patches.reshape(heads, -1, merge_unit, patches.shape[-1]).mean(dim=2)
            weights = torch.softmax(mean_query @ units.transpose(1, 2) * scale, dim=-1)
            out["probe"] = weights.mean(dim=0)[0].repeat_interleave(merge_unit)
    if "keys" in wanted:
        out["keys"] = key.mean(dim=0)[prefix:]
    return out


@contextmanager
def probe(layer: SignalLayer, wanted: frozenset[str]) -> Iterator[ChunkSignals]:
    """Record ``wanted`` signals at ``layer`` while the block runs; the hook is removed on
    exit, whatever happens inside."""
    unknown = set(wanted) - set(SIGNALS)
    if unknown:
        raise ValueError(f"unknown vision signals: {', '.join(sorted(unknown))}")
    recorded = ChunkSignals()
    module = layer.module

    def hook(_: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        with torch.inference_mode():
            if hasattr(module, "qkv"):
                chunks = _fused_chunks(module, hidden, kwargs)
            else:
                chunks = _split_chunks(module, hidden)
            for query, key in chunks:
                values = chunk_signals(query, key, _scale(module, query.shape[-1]),
                                       layer.prefix_tokens, wanted, layer.merge_unit)
                for name, value in values.items():
                    getattr(recorded, name).append(value)

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield recorded
    finally:
        handle.remove()


def feature_layer(tower: torch.nn.Module, vision_feature_layer: int | list[int],
                  select_strategy: str | None) -> SignalLayer:
    """The attention module of the layer whose output a LLaVA-style model reads
    (``hidden_states[vision_feature_layer]``: the last one of a list), and the CLS token the
    ``default`` strategy drops."""
    layer = vision_feature_layer[-1] if isinstance(vision_feature_layer, list) \
        else vision_feature_layer
    modules = attention_modules(tower)
    # hidden_states[0] is the embeddings; hidden_states[j] is the output of layer j - 1
    index = len(modules) + layer if layer < 0 else layer - 1
    return SignalLayer(modules[index], prefix_tokens=1 if select_strategy == "default" else 0)


def square_grids(values: torch.Tensor) -> torch.Tensor:
    """(chunks, P, C) per-patch values as (chunks, C, side, side) images of a square grid."""
    side = round(values.shape[1] ** 0.5)
    if side * side != values.shape[1]:
        raise RuntimeError(f"expected a square grid of patches, got {values.shape[1]}")
    return values.transpose(1, 2).reshape(values.shape[0], values.shape[2], side, side)


def grid_tokens(images: torch.Tensor) -> torch.Tensor:
    """(chunks, C, h, w) back to (chunks, h*w, C) in raster order."""
    return images.flatten(2).transpose(1, 2)
