"""The adapter interface and the family-independent half of applying a KeepPlan.

Flow for each (video, question): ``prepare`` runs the model's own chat template and processor,
``encode`` runs the vision encoder once and exposes the (T, N, D) features, ``compress`` drops
video tokens with ONE keep-mask over the sequence (ids, attention mask, token types, positions)
and the same mask over the encoder output, and ``generate`` left-pads several compressed items
into one batch and calls ``model.generate`` with the precomputed vision outputs. Nothing inside
transformers is patched; with an all-True plan the model sees exactly its usual inputs.
"""

from __future__ import annotations

import copy
import functools
import inspect
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..compression import InLLMStage, KeepPlan, PrefillStage, VisionSignals
from ..timing import GenerationTiming, StageTimer, TokenClock
from . import decoder_loop
from .conversation import question_texts, template_messages
from .loop_state import LLMTokens, LoopCall, PendingLayers
from .sizing import PixelBounds, resolve_bounds
from .vision_signals import SignalLayer, probe

# What receives generated text: one callback for a batch of one, or one per item (None: that
# item is not streamed).
TextCallbacks = Callable[[str], None] | Sequence[Callable[[str], None] | None] | None


class QuestionError(ValueError):
    """A question the model cannot be asked as text."""


@dataclass
class PreparedItem:
    """One (video, question) after the processor, batch dimension 1: on the CPU after
    ``preprocess``, on the model's device after ``to_device`` (but the token mask, which is
    only read on the host, stays on the CPU)."""

    inputs: dict[str, torch.Tensor]
    video_token_mask: torch.Tensor  # (L,) True at video placeholder tokens, on the CPU
    positions: torch.Tensor  # (P, L) positions of the uncompressed sequence

    @property
    def length(self) -> int:
        return int(self.inputs["input_ids"].shape[1])

    @property
    def has_pixels(self) -> bool:
        return any(key.startswith("pixel_values") for key in self.inputs)

    def without_pixels(self) -> PreparedItem:
        """The item less its pixels, which nothing reads after the vision encoder: an item
        waiting for its batch's ``generate`` then holds only token ids and features."""
        inputs = {key: value for key, value in self.inputs.items()
                  if not key.startswith("pixel_values")}
        return PreparedItem(inputs, self.video_token_mask, self.positions)


@dataclass
class EncodedVideo:
    """The vision encoder's output for one video and the layout the compressor scores."""

    features: torch.Tensor  # (T units, N tokens per unit in raster order, D)
    grid: tuple[int, int]  # (h, w) of the token grid of one unit
    output: Any  # what the model takes as mm_encoder_outputs["video"]
    signals: VisionSignals | None = None  # read from the tower when a method asked for them


@dataclass
class CompressedItem:
    """One item with a plan applied: 1-D sequences and positions of the kept tokens."""

    input_ids: torch.Tensor  # (L',)
    mm_token_type_ids: torch.Tensor | None  # (L',)
    position_ids: torch.Tensor  # (P, L'): P rows of positions (1 for LLaVA, 3 for Qwen M-RoPE)
    output: Any
    full_length: int
    stages: tuple[InLLMStage, ...] = ()  # the plan's stages inside the language model

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class PrefixCache:
    """The language model's cache after one prefill of the compressed prompt prefixes (system
    turn and video, up to the question) of one or more videos, left-padded into one batch.

    Every question about those videos is answered on a copy of it, so the video tokens are
    prefilled once whatever the number of questions.
    """

    cache: Any
    lengths: list[int]  # kept prefix tokens of each video (row)
    prefill_ms: float
    # with an in-LLM prefill stage: the prefix ran only the layers before it (the stage reads
    # the question's last token); what enters that layer waits here for the question
    pending: PendingLayers | None = None
    # prefixes whose plans run different in-LLM stages cannot share one run of the language
    # model: each such set of rows is a prefix cache of its own (``cache`` is then None)
    parts: list[tuple[list[int], PrefixCache]] | None = None

    @property
    def width(self) -> int:
        return max(self.lengths)

    def part_of(self, row: int) -> tuple[int, int]:
        """The part holding ``row`` and the row's place in it ((0, row) without parts)."""
        for index, (rows, _) in enumerate(self.parts or ()):
            if row in rows:
                return index, rows.index(row)
        return 0, row


@dataclass(frozen=True)
class GenerationResult:
    """Generated text and token ids for each item of a batch, and the batch's timing."""

    texts: list[str]
    token_ids: list[list[int]]
    timing: GenerationTiming
    prompt_lengths: list[int]
    # per item, what the language model held of its visual tokens; None without in-LLM stages
    llm_tokens: list[LLMTokens | None] | None = None


class VideoAdapter(ABC):
    """Runs one model family; subclasses say how its video features are laid out."""

    def __init__(self, model: torch.nn.Module, processor: Any, device: torch.device) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.video_token_id = self.placeholder_token_id
        # One processor call at a time among the prefetch threads, a precaution: fast
        # tokenizers have raised "Already borrowed" when entered from two threads at once
        # (not reproduced here). Decoding, the slow part, still runs in parallel.
        self._processor_lock = threading.Lock()

    # --- family specifics ---------------------------------------------------------------

    @property
    def placeholder_token_id(self) -> int:
        """The token the processor repeats once per visual token of the video (InternVL
        repeats its image token in every frame)."""
        return int(self.model.config.video_token_id)

    @property
    def encoder_output_key(self) -> str:
        """Under which key of ``mm_encoder_outputs`` the model reads the video's features
        (InternVL reads a video's frames as images)."""
        return "video"

    @property
    def context_length(self) -> int:
        """The most positions the language model was built for (prompt + generated)."""
        return int(self.model.config.get_text_config().max_position_embeddings)

    @property
    def frames_multiple(self) -> int:
        """The frame count must be a multiple of this (Qwen's temporal patch is 2 frames)."""
        return 1

    @property
    def processor_options(self) -> dict[str, Any]:
        """Extra keyword arguments for the processor call."""
        return {}

    @property
    def default_pixel_bounds(self) -> PixelBounds | None:
        """Per-frame pixel bounds used unless others are given; None for a family without
        them (frames resized to a fixed size, or by the processor's own limits)."""
        return None

    def pixel_bounds(self, min_pixels: int | None = None, max_pixels: int | None = None
                     ) -> PixelBounds | None:
        """The default bounds with the given ones in their place (ValueError when the family
        has none or they make no range)."""
        return resolve_bounds(self.default_pixel_bounds, min_pixels, max_pixels)

    def sizing_options(self, frames: int, bounds: PixelBounds | None) -> dict[str, Any]:
        """Processor keyword arguments that size ``frames`` frames within ``bounds``."""
        return {}

    @abstractmethod
    def run_encoder(self, item: PreparedItem) -> Any:
        """The vision encoder on one item's video: the output the language model reads (as
        ``mm_encoder_outputs["video"]``), nothing more."""

    @abstractmethod
    def describe(self, output: Any, inputs: dict[str, torch.Tensor]) -> EncodedVideo:
        """The (T, N, D) features and grid the compressor scores, views of ``output``."""

    @abstractmethod
    def output_tensors(self, output: Any) -> dict[str, torch.Tensor]:
        """The encoder output as named tensors (what a feature cache stores)."""

    @abstractmethod
    def output_from_tensors(self, tensors: dict[str, torch.Tensor]) -> Any:
        """The inverse of ``output_tensors``."""

    @abstractmethod
    def feature_keep_mask(self, plan: KeepPlan) -> torch.Tensor:
        """Mask over the item's video placeholder tokens (structural ones always kept)."""

    @abstractmethod
    def map_output(self, output: Any, transform: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        """The encoder output with ``transform`` applied to each of its per-token tensors, each
        given as (tokens, D) with the video's T*N features first, in feature order."""

    @abstractmethod
    def merge_outputs(self, outputs: list[Any]) -> Any:
        """One encoder output for a batch, items in order."""

    @abstractmethod
    def full_positions(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(P, L) positions of the uncompressed sequence, as the model itself computes them."""

    @abstractmethod
    def kept_positions(self, full: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """(P, L') positions of the kept tokens (indices into the sequence, ascending)."""

    @abstractmethod
    def batch_positions(self, positions: torch.Tensor, attention_mask: torch.Tensor
                        ) -> torch.Tensor:
        """Left-padded (P, B, L) positions as ``generate`` wants them for this family."""

    @property
    def compression_profile(self) -> str:
        """How this family's tokens look to the methods whose official code differs by family
        (``compression.PROFILES``): Qwen-style merged grids unless a family says otherwise."""
        return "qwen"

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

    @property
    def video_mark_ids(self) -> frozenset[int]:
        """Tokens that stand for the video in a prompt: the placeholder the processor repeats,
        and, where the chat template writes another one that the processor expands into
        frames (InternVL's ``<video>``), that one too."""
        return frozenset({self.video_token_id})

    @property
    def video_close_ids(self) -> frozenset[int]:
        """A token that closes the whole video after text following its last frame (GLM's
        ``<|end_of_video|>``, after the last timestamp): the prefix runs up to it."""
        return frozenset()

    @property
    def video_end_ids(self) -> frozenset[int]:
        """Structural tokens that close a video (Qwen's ``<|vision_end|>``): they belong to the
        question-independent prefix of a prompt."""
        end = getattr(self.model.config, "vision_end_token_id", None)
        return frozenset() if end is None else frozenset({int(end)})

    # --- shared steps -------------------------------------------------------------------

    def encode(self, item: PreparedItem, signals: frozenset[str] = frozenset()) -> EncodedVideo:
        """Run the vision encoder on one item's video; with ``signals`` (names of
        ``compression.SIGNALS``), also read those signals from the tower through a hook that
        is gone when this returns."""
        if not signals:
            return self.describe(self.run_encoder(item), item.inputs)
        with probe(self.signal_layer(), signals) as recorded:
            output = self.run_encoder(item)
        encoded = self.describe(output, item.inputs)
        pooled = {}
        for name in signals:
            values = recorded.stacked(name).to(self.device)
            scalar = values.dim() == 2
            grid = self.pool_signals(values.unsqueeze(-1) if scalar else values, item.inputs)
            if tuple(grid.shape[:2]) != tuple(encoded.features.shape[:2]):
                raise RuntimeError(f"vision signal {name!r} pooled to {tuple(grid.shape[:2])}, "
                                   f"features are {tuple(encoded.features.shape[:2])}")
            pooled[name] = grid.squeeze(-1) if scalar else grid
        encoded.signals = VisionSignals(**pooled)
        return encoded

    def signal_layer(self) -> SignalLayer:
        """The vision attention module whose signals the methods read: the one of the layer
        the features come from (the last full-attention block on Qwen-style towers)."""
        raise NotImplementedError(f"{type(self).__name__} reads no vision signals")

    def pool_signals(self, values: torch.Tensor, inputs: dict[str, torch.Tensor]
                     ) -> torch.Tensor:
        """Per-patch values (chunks, P, C) onto the feature grid (T, N, C), pooled as the
        family pools its features."""
        raise NotImplementedError(f"{type(self).__name__} reads no vision signals")

    @property
    def chat_template_options(self) -> dict[str, Any]:
        """Variables for the chat template (Qwen3.5: no thinking before the answer)."""
        return {}

    @functools.cached_property
    def _special_tokens(self) -> frozenset[str]:
        """The tokenizer's special tokens, those it declares and those added as special (Qwen's
        vision placeholders are the latter)."""
        tokenizer = self.processor.tokenizer
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        return frozenset(tokenizer.all_special_tokens) | frozenset(
            token.content for token in added.values() if getattr(token, "special", False))

    def prompt(self, question: str) -> str:
        """The chat template around the video and ``question`` (a ``Conversation``: its
        messages); QuestionError when a text holds one of the tokenizer's special tokens (it
        would be read as that token, not as text: a video placeholder in it would break the
        prompt's layout)."""
        for text in question_texts(question):
            for token in self._special_tokens:
                if token in text:
                    raise QuestionError(f"question: holds {token!r}, one of the model's special "
                                        "tokens")
        messages = template_messages(question)
        return self.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False, **self.chat_template_options)

    def prepare(self, frames: np.ndarray, metadata: dict[str, Any], question: str,
                bounds: PixelBounds | None = None) -> PreparedItem:
        """``preprocess`` then ``to_device``: an item ready for ``encode``."""
        return self.to_device(self.preprocess(frames, metadata, question, bounds))

    def preprocess(self, frames: np.ndarray, metadata: dict[str, Any], question: str,
                   bounds: PixelBounds | None = None) -> PreparedItem:
        """Chat template + the model's processor on frames we decoded ourselves, on the CPU.

        The metadata (source fps, total frames, sampled indices) drives Qwen2.5-VL's temporal
        positions and Qwen3-VL's timestamps; frame sampling stays ours. The positions are
        computed here too (Qwen's M-RoPE index walks the sequence on the host). Frames are sized
        within ``bounds`` per frame (default: ``default_pixel_bounds``). Touches neither the
        model's weights nor the device, so it can run on a worker thread while the model works.
        """
        sizing = self.sizing_options(len(frames), bounds or self.default_pixel_bounds)
        with self._processor_lock:
            encoded = self.processor(text=[self.prompt(question)], videos=[frames],
                                     video_metadata=[metadata], do_sample_frames=False,
                                     return_tensors="pt", **self.processor_options, **sizing)
        inputs = {key: value.to(self.model.dtype) if key.startswith("pixel_values") else value
                  for key, value in encoded.items() if isinstance(value, torch.Tensor)}
        video_token_mask = inputs["input_ids"][0] == self.video_token_id
        return PreparedItem(inputs=inputs, video_token_mask=video_token_mask,
                            positions=self.full_positions(inputs))

    def prefix_length(self, input_ids: list[int]) -> int:
        """Where the question starts in a prompt: after the video's last token and the
        structural tokens that close it. Everything before is the same for every question
        about the video (the chat template puts the video first)."""
        marks = self.video_mark_ids
        last = max((index for index, token in enumerate(input_ids) if token in marks),
                   default=None)
        if last is None:
            raise ValueError("the prompt holds no video token")
        end = last + 1
        while end < len(input_ids) and input_ids[end] in self.video_end_ids:
            end += 1
        closes = self.video_close_ids
        if closes:  # text (GLM's last timestamp) between the last frame and the video's end
            end = next((index + 1 for index in range(end, len(input_ids))
                        if input_ids[index] in closes), end)
        return end

    def question_suffix(self, question: str) -> torch.Tensor:
        """The token ids that follow the prefix when ``question`` is asked, from the model's
        chat template and tokenizer alone (no processor, no pixels).

        These are the ids the processor gives: it only repeats the video placeholder, and the
        text after a special token is tokenized on its own.
        """
        with self._processor_lock:
            ids = self.processor.tokenizer(self.prompt(question),
                                           add_special_tokens=False)["input_ids"]
        return torch.tensor(ids[self.prefix_length(ids):], dtype=torch.long)

    def with_question(self, item: PreparedItem, question: str) -> PreparedItem:
        """``item`` (on the CPU) asking ``question`` instead: the same prefix, the new
        question's tokens after it, and positions from the model's own function on the whole
        new sequence (Qwen's text positions after a video are the model's to decide)."""
        split = self.prefix_length(item.inputs["input_ids"][0].tolist())
        suffix = self.question_suffix(question)[None]
        inputs = dict(item.inputs)
        for key, fill in (("input_ids", None), ("attention_mask", 1), ("mm_token_type_ids", 0)):
            if key in inputs:
                tail = suffix if fill is None else torch.full_like(suffix, fill)
                inputs[key] = torch.cat([inputs[key][:, :split], tail.to(inputs[key].dtype)],
                                        dim=1)
        mask = torch.cat([item.video_token_mask[:split],
                          torch.zeros(suffix.shape[1], dtype=torch.bool)])
        return PreparedItem(inputs=inputs, video_token_mask=mask,
                            positions=self.full_positions(inputs))

    def to_device(self, item: PreparedItem) -> PreparedItem:
        """The item on the model's device.

        Pixels are already in the model's dtype (cast on the CPU by ``preprocess``, which halves
        the copy in bf16); every other input keeps its dtype: Qwen2.5-VL's
        ``second_per_grid_ts`` scales temporal positions, which bf16 would round (2264 -> 2272).
        """
        inputs = {key: value.to(self.device) for key, value in item.inputs.items()}
        return PreparedItem(inputs=inputs, video_token_mask=item.video_token_mask,
                            positions=item.positions.to(self.device))

    def compress(self, item: PreparedItem, encoded: EncodedVideo, plan: KeepPlan
                 ) -> CompressedItem:
        """Apply a plan: one keep-mask slices the sequence, its positions and the features,
        after the plan's merges (if any) fold dropped tokens into kept ones in every per-token
        tensor. A merged token keeps its own place, so its position is its original one.

        The masks over the sequence and over the features each become indices once (the kept
        count sizes every tensor after it, so these two ``nonzero`` calls are where the host
        waits for the device), and every slice is an ``index_select``.
        """
        feature_mask = self.feature_keep_mask(plan).to(self.device)
        kept_features = feature_mask.nonzero().squeeze(1)

        def merge_and_keep(tokens: torch.Tensor) -> torch.Tensor:
            # with device_map, the tokens may sit on another GPU than self.device
            return plan.apply(tokens).index_select(0, kept_features.to(tokens.device))

        keep = torch.ones(item.length, dtype=torch.bool, device=self.device)
        keep[item.video_token_mask] = feature_mask
        kept = keep.nonzero().squeeze(1)
        types = item.inputs.get("mm_token_type_ids")
        return CompressedItem(
            input_ids=item.inputs["input_ids"][0].index_select(0, kept),
            mm_token_type_ids=None if types is None else types[0].index_select(0, kept),
            position_ids=self.kept_positions(item.positions, kept),
            output=self.map_output(encoded.output, merge_and_keep),
            full_length=item.length,
            stages=plan.stages,
        )

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


class DensePositionsAdapter(VideoAdapter):
    """A family with 1-D positions whose compressed sequence gets dense positions 0..L'-1, as
    the VidCom2 authors' code does for LLaVA (the kept tokens close up)."""

    def full_positions(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.arange(inputs["input_ids"].shape[1])[None]

    def kept_positions(self, full: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        return torch.arange(kept.numel(), device=full.device)[None]

    def batch_positions(self, positions: torch.Tensor, attention_mask: torch.Tensor
                        ) -> torch.Tensor:
        return positions[0]

    def output_tensors(self, output: Any) -> dict[str, torch.Tensor]:
        """These families' encoder output is one pooled tensor."""
        return {"pooler_output": output.pooler_output}

    def output_from_tensors(self, tensors: dict[str, torch.Tensor]) -> Any:
        return BaseModelOutputWithPooling(pooler_output=tensors["pooler_output"])


class TextStreamer:
    """A ``generate`` streamer that hands the new text to a callback as tokens arrive.

    ``generate`` first puts the prompt, then each new token; text is decoded from all the
    answer's tokens so far (a token may end inside a multi-byte character, which waits for the
    next one), and nothing after a stop token is passed on.
    """

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None], stops: set[int]) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.stops = stops
        self.prompt_seen = False
        self.stopped = False
        self.tokens: list[int] = []
        self.sent = 0

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.stopped = self.stopped or token in self.stops
            if not self.stopped:
                self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()
        if text.endswith("\ufffd"):
            return
        if len(text) > self.sent:
            self.on_text(text[self.sent:])
            self.sent = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()
        if len(text) > self.sent:
            self.on_text(text[self.sent:])
            self.sent = len(text)


class RowStreamer:
    """A ``generate`` streamer for a batch: each row's text goes to its own callback (None: that
    row is not streamed), as ``TextStreamer`` does for a batch of one."""

    def __init__(self, tokenizer: Any, callbacks: Sequence[Callable[[str], None] | None],
                 stops: set[int]) -> None:
        self.rows = [None if callback is None else TextStreamer(tokenizer, callback, stops)
                     for callback in callbacks]
        for row in self.rows:
            if row is not None:
                row.prompt_seen = True  # the batch's prompt is skipped here, once
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        tokens = value.reshape(-1)
        for index, row in enumerate(self.rows):
            if row is not None:
                row.put(tokens[index:index + 1])

    def end(self) -> None:
        for row in self.rows:
            if row is not None:
                row.end()


class RowStop:
    """A stopping criterion asking each row's own check after every token (None: never)."""

    def __init__(self, checks: Sequence[Callable[[], bool] | None]) -> None:
        self.checks = list(checks)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
                 ) -> torch.Tensor:
        return torch.tensor([check is not None and bool(check()) for check in self.checks],
                            dtype=torch.bool, device=input_ids.device)


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
