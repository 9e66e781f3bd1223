"""The language model's decoder stack run layer by layer, so in-LLM stages can act between layers.

transformers runs a text model's layers in one ``forward`` that computes the attention masks and
rotary embeddings once for the whole stack; a stage that drops or merges visual tokens at layer
K (HoliTom, FastV) or chooses which cached visual entries a decoding step attends to (DyCoke)
needs the layers one at a time. ``DecoderLoop`` stands in for the text model (``get_decoder``)
for the length of one call, with ``set_decoder``, and runs the model's OWN modules: its rotary
module, its decoder layers, its final norm, and the masks from ``transformers.masking_utils``
built for each group of layers (the layers between two stages) from that group's 2-D padding
mask and cache. Nothing of the model is copied or patched; the multimodal forward, the
embedding of the video features and ``generate`` (sampling, streaming, stopping) stay stock.

Bookkeeping, all in terms of the prompt's COLUMNS (token indices of the collated, left-padded
prompt, as ``generate`` numbers them):
- group 0 (layers before the first stage) holds every column, exactly as the stock model;
- a prefill stage at layer K reduces the visual tokens of each row; later layers see the kept
  columns (re-left-padded per batch), their original rotary positions, a causal mask over them
  and a cache of only them; decoding continues the uncompressed numbering (as the official
  code, whose position ids come from layer 0's cache length);
- a decode stage at layer L gives layers >= L, at one step, a view of their cache gathered at
  the entries it keeps (the cache itself keeps everything), with the mask sized to the view.

The attention a stage reads (the last query token's, mean over heads) is recorded by
``attention_probe`` for the one layer that needs it; what a call keeps between layer groups
and reports per answer lives in ``loop_state``.

Supported: text models whose layers are all full attention (``layer_types``), with a ``norm``
and a ``rotary_emb``: Qwen2 (LLaVA-OneVision, InternVL), Llama (LLaVA-NeXT-Video), Qwen2-VL,
Qwen2.5-VL, GLM-4.xV and Qwen3-VL(-MoE) (deepstack features are added by the model's own
``_deepstack_process``; a prefill stage must come after the deepstack layers). Qwen3.5's hybrid
stack (Gated DeltaNet linear-attention layers, whose recurrent state has no per-token entries
to drop or skip) is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast

from ..compression.inllm import DecodeStage, InLLMStage, PrefillStage, VisualSpan, check_stages
from .attention_probe import recording_attention
from .loop_state import LayerSequence, LoopCall, PendingLayers

# --- support ---------------------------------------------------------------------------------


def text_model(model: torch.nn.Module) -> torch.nn.Module:
    """The multimodal model's language model (the decoder stack)."""
    return model.get_decoder()


def deepstack_layers(model: torch.nn.Module) -> int:
    """How many first layers get deepstack features added after them (Qwen3-VL), else 0."""
    vision = getattr(model.config, "vision_config", None)
    return len(getattr(vision, "deepstack_visual_indexes", None) or ())


def unsupported(model: torch.nn.Module, stages: tuple[InLLMStage, ...]) -> str | None:
    """Why ``stages`` cannot run on ``model`` (one line), or None when they can."""
    check_stages(stages)
    text = text_model(model)
    missing = [name for name in ("layers", "norm", "rotary_emb") if not hasattr(text, name)]
    if missing:
        return (f"its language model ({type(text).__name__}) is not a plain decoder stack (no "
                f"{', '.join(missing)})")
    depth = len(text.layers)
    kinds = set(getattr(text.config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        other = ", ".join(sorted(kinds - {"full_attention"}))
        return (f"its language model ({type(text).__name__}) has {other} layers, whose state "
                "has no per-token entries to drop or skip; only full-attention stacks are "
                "supported")
    deepstack = deepstack_layers(model)
    for stage in stages:
        if stage.layer >= depth:
            return (f"stage {stage.name} acts at layer {stage.layer}, but the language model "
                    f"has {depth} layers (0..{depth - 1})")
        if isinstance(stage, PrefillStage) and stage.layer < deepstack:
            return (f"stage {stage.name} acts before the last deepstack layer ({deepstack - 1}), "
                    "whose features belong to every visual token")
    return None


def _causal_mask(**arguments: Any) -> Any:
    """transformers' ``create_causal_mask``. Its module (like ``modeling_utils``, imported in
    the probe's functions) imports torch._dynamo and torchvision, seconds on a busy CPU, so it
    is imported at the first call, when a model is loaded and has imported it, not with this
    module, which every import of the engine brings in (tests/test_startup.py)."""
    from transformers.masking_utils import create_causal_mask

    return create_causal_mask(**arguments)


# --- the loop --------------------------------------------------------------------------------


class _GatheredView:
    """A cache as a decode stage's layers see it at one step: every ``update`` goes to the real
    cache, and the layer gets back its keys and values gathered at ``index`` (B, m)."""

    is_compileable = False

    def __init__(self, cache: Any, index: torch.Tensor) -> None:
        self.cache = cache
        self.index = index

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.cache.update(key_states, value_states, layer_idx, *args, **kwargs)
        index = self.index.to(keys.device)[:, None, :, None].expand(
            keys.shape[0], keys.shape[1], -1, keys.shape[3])
        return keys.gather(2, index), values.gather(2, index)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.index.shape[1] - 1

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.index.shape[1] - 1

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.index.shape[1], 0


class DecoderLoop(torch.nn.Module):
    """Stands in for a text model during one call (see the module docstring)."""

    def __init__(self, text: torch.nn.Module, call: LoopCall) -> None:
        super().__init__()
        object.__setattr__(self, "text", text)  # not a submodule: the weights stay where they are
        object.__setattr__(self, "call", call)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "text"), name)

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: Any = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                **kwargs: Any) -> BaseModelOutputWithPast:
        text = self.text
        hidden = (text.get_input_embeddings()(input_ids) if inputs_embeds is None
                  else inputs_embeds)
        kwargs.pop("past_key_values", None)
        if cache is None and use_cache:
            cache = DynamicCache(config=text.config)
        past = cache.get_seq_length() if cache is not None else 0
        rotary_positions, positions = self._positions(position_ids, hidden, past)
        rotary = text.rotary_emb(hidden, rotary_positions)
        mask = _causal_mask(config=text.config, inputs_embeds=hidden,
                            attention_mask=attention_mask, cache=cache,
                            position_ids=positions)
        length = hidden.shape[1]
        rows = hidden.shape[0]
        padding = (torch.ones(rows, past + length, dtype=torch.bool, device=hidden.device)
                   if attention_mask is None else attention_mask.bool())
        if past + length <= self.call.width:
            everything = torch.arange(past + length, device=hidden.device).expand(rows, -1)
            self.call.groups = [(0, LayerSequence(None, everything, padding, None, None))]
            columns = torch.arange(past, past + length, device=hidden.device).expand(rows, -1)
            sequence = LayerSequence(hidden, columns, padding[:, past:], rotary,
                                 None if positions is None else positions.expand(rows, -1))
            hidden = self._prompt(sequence, mask, cache, padding, kwargs)
        else:
            hidden = self._decode_step(hidden, mask, rotary, positions, cache, padding, kwargs)
        return BaseModelOutputWithPast(last_hidden_state=text.norm(hidden), cache=cache)

    def _positions(self, position_ids: torch.Tensor | None, hidden: torch.Tensor, past: int
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The rotary module's positions and the layers' ``position_ids``, as the text models
        split them: (4, B, L) is 1-D text positions on top of M-RoPE's three rows."""
        if position_ids is None:
            position_ids = torch.arange(past, past + hidden.shape[1],
                                        device=hidden.device)[None]
        rope = getattr(self.text.config, "rope_parameters", None) or {}
        if position_ids.dim() == 2 and "mrope_section" in rope:
            position_ids = position_ids[None].expand(3, *position_ids.shape)
        if position_ids.dim() == 3:
            if position_ids.shape[0] == 4:
                return position_ids[1:], position_ids[0]
            return position_ids, None
        return position_ids, position_ids

    def _run(self, index: int, hidden: torch.Tensor, mask: Any, rotary: Any,
             positions: torch.Tensor | None, cache: Any, kwargs: dict[str, Any]
             ) -> torch.Tensor:
        layer = self.text.layers[index]
        output = layer(hidden, attention_mask=mask, position_embeddings=rotary,
                       position_ids=positions, cache=cache, **kwargs)
        hidden = output[0] if isinstance(output, tuple) else output
        deepstack = kwargs.get("deepstack_visual_embeds")
        if deepstack is not None and index < len(deepstack):
            hidden = self.text._deepstack_process(hidden, kwargs["visual_pos_masks"],
                                                  deepstack[index])
        return hidden

    def _run_recording(self, index: int, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        with recording_attention(self.text.config) as sink:
            hidden = self._run(index, *args)
        return hidden, sink[-1]

    # --- the prompt ------------------------------------------------------------------------

    def _prompt(self, sequence: LayerSequence, mask: Any, cache: Any, padding: torch.Tensor,
                kwargs: dict[str, Any]) -> torch.Tensor:
        call = self.call
        stages = {stage.layer: stage for stage in call.stages if isinstance(stage, PrefillStage)}
        layer_kwargs = {key: value for key, value in kwargs.items()
                        if key not in ("deepstack_visual_embeds", "visual_pos_masks",
                                       "logits_to_keep")}
        deep = {key: kwargs[key] for key in ("deepstack_visual_embeds", "visual_pos_masks")
                if key in kwargs}
        hidden = sequence.hidden
        attention = None
        for index in range(len(self.text.layers)):
            if index in stages and call.stop_before != index:
                if call.pending is not None and index == call.pending.layer:
                    sequence = LayerSequence.cat(call.pending.sequence, _replace_hidden(sequence,
                                                                                    hidden))
                    call.pending = None
                else:
                    sequence = _replace_hidden(sequence, hidden)
                sequence = self._reduce(stages[index], sequence, attention)
                hidden = sequence.hidden
                mask = _causal_mask(config=self.text.config, inputs_embeds=hidden,
                                    attention_mask=sequence.valid, cache=cache,
                                    position_ids=sequence.positions, layer_idx=index)
                call.groups.append((index, LayerSequence(None, sequence.columns, sequence.valid,
                                                     None, None)))
            if call.stop_before == index:
                call.pending = PendingLayers(_replace_hidden(sequence, hidden), index)
                return hidden
            args = (hidden, mask, sequence.rotary, sequence.positions, cache,
                    {**layer_kwargs, **deep})
            if index + 1 in stages and call.stop_before != index + 1:
                hidden, attention = self._run_recording(index, *args)
            else:
                hidden = self._run(index, *args)
        return hidden

    def _reduce(self, stage: PrefillStage, sequence: LayerSequence, attention: torch.Tensor
                ) -> LayerSequence:
        """Each row's visual tokens through ``stage``; the rows re-left-padded."""
        call = self.call
        visual = call.visual.to(sequence.columns.device)
        hidden = sequence.hidden
        kept_rows, new_hidden = [], []
        for row in range(hidden.shape[0]):
            valid = sequence.valid[row]
            is_visual = valid & visual[row][sequence.columns[row]]
            span = is_visual.nonzero().squeeze(1)
            reduction = stage.reduce(VisualSpan(hidden[row, span], attention[row, span]))
            keep = valid & ~is_visual
            keep[span[reduction.kept]] = True
            kept_rows.append(keep.nonzero().squeeze(1))
            new_hidden.append((span[reduction.kept], reduction.hidden))
            call.counts[row].prefill[stage.layer] = int(reduction.kept.numel())
        width = max(kept.numel() for kept in kept_rows)
        index = torch.zeros(len(kept_rows), width, dtype=torch.long, device=hidden.device)
        valid = torch.zeros(len(kept_rows), width, dtype=torch.bool, device=hidden.device)
        for row, kept in enumerate(kept_rows):
            index[row, width - kept.numel():] = kept
            valid[row, width - kept.numel():] = True
        merged = hidden.clone()
        for row, (slots, values) in enumerate(new_hidden):
            merged[row, slots] = values.to(merged.dtype)
        return _replace_hidden(sequence, merged).select(index, valid)

    # --- a decoding step -------------------------------------------------------------------

    def _decode_step(self, hidden: torch.Tensor, mask: Any, rotary: Any,
                     positions: torch.Tensor | None, cache: Any, padding: torch.Tensor,
                     kwargs: dict[str, Any]) -> torch.Tensor:
        call = self.call
        text = self.text
        layer_kwargs = {key: value for key, value in kwargs.items()
                        if key not in ("deepstack_visual_embeds", "visual_pos_masks",
                                       "logits_to_keep")}
        generated = padding[:, call.width:]
        group_masks = {0: mask}
        for start, sequence in call.groups[1:]:
            group_masks[start] = _causal_mask(
                config=text.config, inputs_embeds=hidden,
                attention_mask=torch.cat([sequence.valid, generated], dim=1), cache=cache,
                position_ids=positions, layer_idx=start)
        decode = next((stage for stage in call.stages if isinstance(stage, DecodeStage)), None)
        starts = sorted(group_masks)
        # each group's visual entries per row, counted once per step (one copy to the host)
        group_visual = {start: self._group_visual(start) for start in starts}
        attended = torch.zeros(hidden.shape[0], dtype=torch.float64)
        layers = len(text.layers)
        view, view_mask, view_visual = None, None, None
        kept: list[int | None] = [None] * hidden.shape[0]
        attention = None
        for index in range(layers):
            group = max(start for start in starts if start <= index)
            layer_mask, layer_cache = group_masks[group], cache
            if decode is not None and index == decode.layer:
                view, view_mask, view_visual, kept = self._prune(
                    decode, attention, group, generated, hidden, positions, cache)
            if view is not None:
                layer_mask, layer_cache = view_mask, view
                attended += view_visual
            else:
                attended += group_visual[group]
            args = (hidden, layer_mask, rotary, positions, layer_cache, layer_kwargs)
            if decode is not None and index + 1 == decode.layer:
                hidden, attention = self._run_recording(index, *args)
            else:
                hidden = self._run(index, *args)
        for row, counts in enumerate(call.counts):
            counts.attended.append(float(attended[row]) / layers)
            counts.kept.append(kept[row])
        return hidden

    def _group(self, start: int) -> LayerSequence:
        return dict(self.call.groups)[start]

    def _group_visual(self, start: int) -> torch.Tensor:
        sequence = self._group(start)
        visual = self.call.visual.to(sequence.columns.device)
        return (sequence.valid & visual.gather(1, sequence.columns)).sum(dim=1).double().cpu()

    def _prune(self, stage: DecodeStage, attention: torch.Tensor, group: int,
               generated: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor | None,
               cache: Any) -> tuple[Any, Any, Any, list[int | None]]:
        """The cache view and mask layers >= ``stage.layer`` use at this step (None when every
        row attends everything), each row's visual entries attended, and each row's kept
        count (None where the row attends everything)."""
        call = self.call
        sequence = self._group(group)
        # the layer before the stage reads the same group's cache (no prefill stage between)
        visual = call.visual.to(sequence.columns.device)
        is_visual = sequence.valid & visual.gather(1, sequence.columns)
        counts = is_visual.sum(dim=1).double().cpu()
        prompt = sequence.columns.shape[1]
        entries = prompt + generated.shape[1]
        keep = torch.ones(hidden.shape[0], entries, dtype=torch.bool, device=hidden.device)
        keep[:, :prompt] = sequence.valid
        keep[:, prompt:] = generated
        kept: list[int | None] = [None] * hidden.shape[0]
        for row in range(hidden.shape[0]):
            span = is_visual[row].nonzero().squeeze(1)
            current = attention[row, span]
            chosen = stage.attend(current, call.previous[row])
            call.previous[row] = current
            if chosen is None:
                continue
            dropped = torch.ones(span.numel(), dtype=torch.bool, device=span.device)
            dropped[chosen] = False
            keep[row, span[dropped]] = False
            counts[row] = chosen.numel()
            kept[row] = chosen.numel()
        if all(count is None for count in kept):
            return None, None, None, kept
        width = int(keep.sum(dim=1).max())
        index = torch.zeros(keep.shape[0], width, dtype=torch.long, device=keep.device)
        valid = torch.zeros(keep.shape[0], width, dtype=torch.bool, device=keep.device)
        for row in range(keep.shape[0]):
            entries_kept = keep[row].nonzero().squeeze(1)
            index[row, width - entries_kept.numel():] = entries_kept
            valid[row, width - entries_kept.numel():] = True
        view = _GatheredView(cache, index)
        mask = _causal_mask(config=self.text.config, inputs_embeds=hidden,
                            attention_mask=valid, cache=view, position_ids=positions,
                            layer_idx=stage.layer)
        return view, mask, counts, kept


def _replace_hidden(sequence: LayerSequence, hidden: torch.Tensor) -> LayerSequence:
    return LayerSequence(hidden, sequence.columns, sequence.valid, sequence.rotary,
                     sequence.positions)


@contextmanager
def running(model: torch.nn.Module, call: LoopCall) -> Iterator[LoopCall]:
    """Within: ``model``'s language model runs layer by layer with ``call``'s stages."""
    text = text_model(model)
    model.set_decoder(DecoderLoop(text, call))
    try:
        yield call
    finally:
        model.set_decoder(text)
