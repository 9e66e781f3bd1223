"""The language-model half of an adapter: compressed prompts left-padded into batches, prompt
prefixes prefilled once, and ``generate`` calls on them.

``LanguageModelBatches`` is a base of ``base.VideoAdapter``: it needs the model, processor,
device and video token the adapter sets, and each family's ``merge_outputs`` and
``batch_positions``. In-LLM stages run through ``decoder_loop`` for the length of a call;
without any, the model's own forward and ``generate`` run untouched.
"""

from __future__ import annotations

import copy
import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..compression import InLLMStage, PrefillStage
from ..timing import GenerationTiming, StageTimer, TokenClock
from . import decoder_loop
from .items import CompressedItem, GenerationResult, PrefixCache, TextCallbacks
from .loop_state import LLMTokens, LoopCall, PendingLayers
from .streaming import RowStop, RowStreamer, TextStreamer


class LanguageModelBatches(ABC):
    """Batches of compressed items through the language model (see the module's docstring)."""

    model: Any
    processor: Any
    device: torch.device
    video_token_id: int
    encoder_output_key: str

    @abstractmethod
    def merge_outputs(self, outputs: list[Any]) -> Any:
        """One encoder output for a batch, items in order."""

    @abstractmethod
    def batch_positions(self, positions: torch.Tensor, attention_mask: torch.Tensor
                        ) -> torch.Tensor:
        """Left-padded (P, B, L) positions as ``generate`` wants them for this family."""

    @property
    def pads_inside_are_neutral(self) -> bool:
        """Whether pad tokens between a cached prefix and a question leave the model's state as
        it was. They do for attention, which masks them out as keys; a layer that keeps a
        recurrent state (Qwen3.5's Gated DeltaNet) still updates it at every pad token (it
        decays), so such a model must answer reused questions without padding inside them.
        (Left padding before a prompt is neutral for both: a state that starts at zero stays
        zero over masked tokens.)"""
        return True

    def prefix_call_groups(self, items: list[CompressedItem], prefix_lengths: list[int]
                           ) -> list[list[int]]:
        """Which items, continuing cached prefixes of ``prefix_lengths`` tokens, can share one
        ``generate`` call: all of them where pads inside a sequence are neutral, else those
        whose questions have the same length (no padding between prefix and question)."""
        if self.pads_inside_are_neutral:
            return [list(range(len(items)))]
        groups: dict[int, list[int]] = {}
        for index, (item, cached) in enumerate(zip(items, prefix_lengths, strict=True)):
            groups.setdefault(item.length - cached, []).append(index)
        return list(groups.values())

    def collate(self, items: list[CompressedItem], prefix_lengths: list[int] | None = None,
                prefix_width: int = 0) -> dict[str, Any]:
        """Left-pad compressed items into ``generate`` keyword arguments.

        With ``prefix_lengths`` (the tokens of each item already in a ``PrefixCache``, whose
        rows are ``prefix_width`` wide), each item's prefix and question are left-padded
        apart: the prefix part lines up with the cached row, the questions follow it, and the
        encoder outputs are left out (their tokens are in the cache).
        """
        cuts = ([[0, item.length] for item in items] if prefix_lengths is None else
                [[0, cached, item.length] for item, cached in zip(items, prefix_lengths,
                                                                  strict=True)])
        widths = [max(cut[part + 1] - cut[part] for cut in cuts)
                  for part in range(len(cuts[0]) - 1)]
        if prefix_lengths is not None:
            widths[0] = prefix_width

        def left_pad(rows: list[torch.Tensor], value: int) -> torch.Tensor:
            parts = []
            for part, width in enumerate(widths):
                out = torch.full((len(rows), *rows[0].shape[:-1], width), value,
                                 dtype=rows[0].dtype, device=self.device)
                for index, row in enumerate(rows):
                    piece = row[..., cuts[index][part]:cuts[index][part + 1]]
                    out[index, ..., width - piece.shape[-1]:] = piece
                parts.append(out)
            return torch.cat(parts, dim=-1)

        attention_mask = left_pad([torch.ones_like(item.input_ids) for item in items], 0)
        positions = left_pad([item.position_ids for item in items], 0).transpose(0, 1)
        batch = {
            "input_ids": left_pad([item.input_ids for item in items], self.pad_token_id),
            "attention_mask": attention_mask,
            "position_ids": self.batch_positions(positions, attention_mask),
        }
        if prefix_lengths is None:
            batch["mm_encoder_outputs"] = {
                self.encoder_output_key: self.merge_outputs([item.output for item in items])}
        if items[0].mm_token_type_ids is not None:
            batch["mm_token_type_ids"] = left_pad([item.mm_token_type_ids for item in items], 0)
        return batch

    @functools.cached_property
    def _cache_argument(self) -> str:
        """The keyword ``forward``/``generate`` take a cache by: ``cache`` in recent
        transformers 5.x, ``past_key_values`` before."""
        parameters = inspect.signature(self.model.forward).parameters
        return "cache" if "cache" in parameters else "past_key_values"

    def check_llm_stages(self, stages: tuple[InLLMStage, ...]) -> None:
        """ValueError (one line) when this model's language model cannot run ``stages``."""
        reason = decoder_loop.unsupported(self.model, stages) if stages else None
        if reason is not None:
            raise ValueError(reason)

    def _loop_call(self, items: list[CompressedItem], batch: dict[str, Any],
                   stop_before: int | None = None, pending: PendingLayers | None = None
                   ) -> LoopCall | None:
        """The decoder loop's call for a batch, None when its items have no in-LLM stage (the
        stock path)."""
        stages = items[0].stages
        if any(item.stages != stages for item in items):
            raise ValueError("one batch mixes in-LLM stages")
        if not stages:
            return None
        self.check_llm_stages(stages)
        return LoopCall(stages, batch["input_ids"] == self.video_token_id,
                        stop_before=stop_before, pending=pending)

    @contextmanager
    def _language_model(self, call: LoopCall | None) -> Iterator[None]:
        """Within: the language model as ``call`` runs it (the stock one when None)."""
        if call is None:
            yield
            return
        with decoder_loop.running(self.model, call):
            yield

    @torch.inference_mode()
    def prefill(self, prefixes: list[CompressedItem]) -> PrefixCache:
        """One forward pass over the compressed prompt prefixes (left-padded into a batch),
        keeping the language model's cache: keys and values, and whatever recurrent state
        the model's layers keep. With an in-LLM prefill stage (which reads the question's last
        token), only the layers before it run; the rest wait for the question."""
        by_stages = _stage_groups(prefixes)
        if len(by_stages) > 1:
            parts = [(rows, self.prefill([prefixes[row] for row in rows])) for rows in by_stages]
            return PrefixCache(cache=None, lengths=[item.length for item in prefixes],
                               prefill_ms=sum(part.prefill_ms for _, part in parts),
                               parts=parts)
        timer = StageTimer(self.device)
        batch = self.collate(prefixes)
        layers = [stage.layer for stage in prefixes[0].stages
                  if isinstance(stage, PrefillStage)]
        call = self._loop_call(prefixes, batch, stop_before=min(layers)) if layers else None
        with timer.stage("prefill"), self._language_model(call):
            output = self.model(**batch, use_cache=True, logits_to_keep=1)
        cache = getattr(output, "cache", None)
        if cache is None:
            cache = output.past_key_values
        return PrefixCache(cache=cache, lengths=[item.length for item in prefixes],
                           prefill_ms=timer.stages_ms["prefill"],
                           pending=None if call is None else call.pending)

    @torch.inference_mode()
    def extend_cache(self, item: CompressedItem, start: int, outputs: list[Any],
                     cache: Any = None) -> Any:
        """Prefill ``item``'s tokens from ``start`` on into ``cache`` (which holds its first
        ``start`` tokens; None: a new cache, ``start`` 0) and return the cache. ``outputs`` are
        the encoder outputs of the video segments among the new tokens, in order (one prompt
        may hold several: a stream's chunks, ``watch``). Without in-LLM stages only."""
        if item.stages:
            raise ValueError("a cache is extended only for plans without in-LLM stages")
        batch = self.collate([item], [start], start)
        for key in ("input_ids", "mm_token_type_ids"):  # the mask still covers the cache
            if key in batch:
                batch[key] = batch[key][:, start:]
        batch["position_ids"] = batch["position_ids"][..., start:]
        if outputs:
            batch["mm_encoder_outputs"] = {self.encoder_output_key: self.merge_outputs(outputs)}
        if cache is not None:
            batch[self._cache_argument] = cache
        output = self.model(**batch, use_cache=True, logits_to_keep=1)
        extended = getattr(output, "cache", None)
        return output.past_key_values if extended is None else extended

    @property
    def pad_token_id(self) -> int:
        tokenizer = self.processor.tokenizer
        pad = tokenizer.pad_token_id
        return int(pad if pad is not None else tokenizer.eos_token_id)

    @torch.inference_mode()
    def generate(self, items: list[CompressedItem], max_new_tokens: int = 64,
                 do_sample: bool = False, min_new_tokens: int | None = None,
                 prefix: PrefixCache | None = None, rows: list[int] | None = None,
                 on_text: TextCallbacks = None,
                 stop: Sequence[Callable[[], bool] | None] | None = None, **sampling: Any
                 ) -> GenerationResult:
        """Generate for a batch of compressed items in one ``generate`` call.

        With ``prefix``, item i continues row ``rows[i]`` of that prefix cache (default: row i)
        on a copy of it, so only its question is prefilled. ``on_text`` receives the answer's
        text as it is generated: one callback (a batch of one), or one per item (None: not
        streamed). ``stop``, one per item, is asked after each token whether that item's
        generation should end there (a client gone, a time limit); the others go on.

        Where padding inside a sequence is not neutral for the model
        (``pads_inside_are_neutral``), questions of different lengths on a prefix go through
        one call per length (no pad between a prefix and its question); the result is theirs,
        in the items' order, with the calls' times added up.
        """
        if prefix is not None:
            rows = list(range(len(items))) if rows is None else rows
        groups = self._call_groups(items, prefix, rows)
        if len(groups) > 1:
            results = []
            for group in groups:
                part, part_rows = prefix, None if rows is None else [rows[i] for i in group]
                if prefix is not None and prefix.parts is not None:
                    index = prefix.part_of(part_rows[0])[0]
                    part = prefix.parts[index][1]
                    part_rows = [prefix.part_of(row)[1] for row in part_rows]
                results.append(self.generate(
                    [items[i] for i in group], max_new_tokens, do_sample, min_new_tokens, part,
                    part_rows, on_text if callable(on_text) or on_text is None
                    else [on_text[i] for i in group],
                    None if stop is None else [stop[i] for i in group], **sampling))
            return _joined(results, groups)
        if prefix is not None and prefix.parts is not None:  # every row in one part
            index = prefix.part_of(rows[0])[0]
            return self.generate(items, max_new_tokens, do_sample, min_new_tokens,
                                 prefix.parts[index][1], [prefix.part_of(row)[1] for row in rows],
                                 on_text, stop, **sampling)
        pending = None
        if prefix is None:
            batch = self.collate(items)
        else:
            batch = self.collate(items, [prefix.lengths[row] for row in rows], prefix.width)
            cache = copy.deepcopy(prefix.cache)
            pending = prefix.pending
            if rows != list(range(len(prefix.lengths))):
                # reorder_cache selects rows of every kind of layer: keys and values, and
                # the convolution and recurrent states of linear-attention layers (which have
                # no batch_select_indices)
                selected = torch.tensor(rows, device=self.device)
                cache.reorder_cache(selected)
                pending = None if pending is None else pending.rows(selected)
            batch[self._cache_argument] = cache
        call = self._loop_call(items, batch, pending=pending)
        clock = TokenClock(self.device)
        stops = set(self._eos_ids()) or {self.pad_token_id}
        streamer: TextStreamer | RowStreamer | None = None
        if callable(on_text):
            streamer = TextStreamer(self.processor.tokenizer, on_text, stops)
        elif on_text is not None and any(callback is not None for callback in on_text):
            streamer = RowStreamer(self.processor.tokenizer, on_text, stops)
        criteria: list[Any] = [clock]
        if stop is not None and any(check is not None for check in stop):
            criteria.append(RowStop(stop))
        clock.begin()
        with self._language_model(call):
            sequences = self.model.generate(
                **batch, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                do_sample=do_sample, stopping_criteria=criteria, pad_token_id=self.pad_token_id,
                streamer=streamer,
                **({} if do_sample else {"temperature": None, "top_p": None, "top_k": None}),
                **sampling,
            )
        new_tokens = sequences[:, batch["input_ids"].shape[1]:]
        token_ids = self.trim(new_tokens.tolist())
        texts = self.processor.tokenizer.batch_decode(token_ids, skip_special_tokens=True)
        return GenerationResult(
            texts=[text.strip() for text in texts], token_ids=token_ids, timing=clock.result(),
            prompt_lengths=[item.length for item in items],
            llm_tokens=None if call is None else call.report(
                self._layers, [len(row) for row in token_ids]))

    def _call_groups(self, items: list[CompressedItem], prefix: PrefixCache | None,
                     rows: list[int] | None) -> list[list[int]]:
        """Which items can share one ``generate`` call: those with the same in-LLM stages (one
        run of the language model), on the same part of a prefix cache, and with a prefix,
        as ``prefix_call_groups`` allows."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, item in enumerate(items):
            part = -1 if prefix is None else prefix.part_of(rows[index])[0]
            groups.setdefault((item.stages, part), []).append(index)
        if prefix is None:
            return list(groups.values())
        refined = []
        for group in groups.values():
            lengths = [prefix.lengths[rows[index]] for index in group]
            refined += [[group[i] for i in sub] for sub in
                        self.prefix_call_groups([items[index] for index in group], lengths)]
        return refined

    @property
    def _layers(self) -> int:
        return len(decoder_loop.text_model(self.model).layers)

    def trim(self, rows: list[list[int]]) -> list[list[int]]:
        """Generated rows without the end-of-sequence token and the padding after it."""
        stops = set(self._eos_ids()) or {self.pad_token_id}
        return [_cut_at_stop(row, stops) for row in rows]

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            return []
        return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]

    @torch.inference_mode()
    def forward_logits(self, items: list[CompressedItem]) -> torch.Tensor:
        """Logits of one prefill forward pass over a batch (for checking, not generation); with
        an in-LLM prefill stage, at the positions its layers kept."""
        batch = self.collate(items)
        with self._language_model(self._loop_call(items, batch)):
            return self.model(**batch, use_cache=False).logits


def _stage_groups(items: list[CompressedItem]) -> list[list[int]]:
    """The items' indices grouped by their in-LLM stages, in order of first appearance."""
    groups: dict[tuple[InLLMStage, ...], list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(item.stages, []).append(index)
    return list(groups.values())


def _joined(results: list[GenerationResult], groups: list[list[int]]) -> GenerationResult:
    """The results of calls made one after another for ``groups`` of one batch's items, as
    one result in the items' order; times and decode steps add up."""
    count = sum(len(group) for group in groups)
    texts: list[str] = [""] * count
    token_ids: list[list[int]] = [[] for _ in range(count)]
    prompt_lengths = [0] * count
    for result, group in zip(results, groups, strict=True):
        for position, index in enumerate(group):
            texts[index] = result.texts[position]
            token_ids[index] = result.token_ids[position]
            prompt_lengths[index] = result.prompt_lengths[position]
    llm_tokens: list[LLMTokens | None] = [None] * count
    for result, group in zip(results, groups, strict=True):
        for position, index in enumerate(group):
            if result.llm_tokens is not None:
                llm_tokens[index] = result.llm_tokens[position]
    timing = GenerationTiming(
        prefill_ms=sum(result.timing.prefill_ms for result in results),
        decode_ms=sum(result.timing.decode_ms for result in results),
        decode_steps=sum(result.timing.decode_steps for result in results))
    return GenerationResult(texts, token_ids, timing, prompt_lengths,
                            None if all(entry is None for entry in llm_tokens) else llm_tokens)


def _cut_at_stop(row: list[int], stops: set[int]) -> list[int]:
    """Drop the end-of-sequence token and the padding after an item that finished early."""
    for index, token in enumerate(row):
        if token in stops:
            return row[:index]
    return row
