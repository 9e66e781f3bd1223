"""The adapter interface and the family-independent half of applying a KeepPlan.

Flow for each (video, question): ``prepare`` runs the model's own chat template and processor,
``encode`` runs the vision encoder once and exposes the (T, N, D) features, ``compress`` drops
video tokens with ONE keep-mask over the sequence (ids, attention mask, token types, positions)
and the same mask over the encoder output, and ``generate`` (``generation``) left-pads several
compressed items into one batch and calls ``model.generate`` with the precomputed vision
outputs. The objects passed between these steps are in ``items``. Nothing inside
transformers is patched; with an all-True plan the model sees exactly its usual inputs.
"""

from __future__ import annotations

import functools
import threading
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..compression import KeepPlan, VisionSignals
from .conversation import question_texts, template_messages
from .generation import LanguageModelBatches
from .items import CompressedItem, EncodedVideo, PreparedItem, QuestionError
from .sizing import PixelBounds, resolve_bounds
from .vision_signals import SignalLayer, probe


class VideoAdapter(LanguageModelBatches):
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
    def full_positions(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(P, L) positions of the uncompressed sequence, as the model itself computes them."""

    @abstractmethod
    def kept_positions(self, full: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """(P, L') positions of the kept tokens (indices into the sequence, ascending)."""

    @property
    def compression_profile(self) -> str:
        """How this family's tokens look to the methods whose official code differs by family
        (``compression.PROFILES``): Qwen-style merged grids unless a family says otherwise."""
        return "qwen"

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

    # --- streams (``watch``): video segments appended one after another ---------------------

    def video_start(self, input_ids: list[int]) -> int:
        """Where the video begins in a prompt: its first placeholder, or the structural token
        that opens it (Qwen's ``<|vision_start|>``) just before, or, where the processor writes
        text before the first frame (Qwen3-VL's timestamp), where the processor's tokens
        part from the chat template's own. What precedes is the head of every prompt about a
        stream; what follows up to ``prefix_length`` is one segment."""
        marks = self.video_mark_ids
        first = next((index for index, token in enumerate(input_ids) if token in marks), None)
        if first is None:
            raise ValueError("the prompt holds no video token")
        opening = getattr(self.model.config, "vision_start_token_id", None)
        while first > 0 and opening is not None and input_ids[first - 1] == int(opening):
            first -= 1
        with self._processor_lock:
            template = self.processor.tokenizer(self.prompt("?"),
                                                add_special_tokens=False)["input_ids"]
        pairs = zip(input_ids, template, strict=False)  # the template is the shorter
        same = next((index for index, (ours, theirs) in enumerate(pairs) if ours != theirs),
                    min(len(input_ids), len(template)))
        return min(first, same)

    def appended_positions(self, full: torch.Tensor, kept: torch.Tensor, start: int
                           ) -> tuple[torch.Tensor, int]:
        """Positions of a video segment's kept tokens when the segment follows a sequence
        whose next free position is ``start``, and the next free position after it.

        ``full`` (P, S) are the segment's uncompressed positions in a prompt of its own and
        ``kept`` indexes the tokens kept. This is how the model's own position function lays
        out several videos in one prompt: each starts where the one before ended (Qwen's M-RoPE
        rows all shifted by one offset, so time positions keep counting)."""
        shift = start - int(full.min())
        return full.index_select(1, kept) + shift, int(full.max()) + shift + 1

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

    def appended_positions(self, full: torch.Tensor, kept: torch.Tensor, start: int
                           ) -> tuple[torch.Tensor, int]:
        """Dense: the kept tokens close up after ``start``."""
        count = int(kept.numel())
        return torch.arange(start, start + count, device=full.device)[None], start + count

    def output_tensors(self, output: Any) -> dict[str, torch.Tensor]:
        """These families' encoder output is one pooled tensor."""
        return {"pooler_output": output.pooler_output}

    def output_from_tensors(self, tensors: dict[str, torch.Tensor]) -> Any:
        return BaseModelOutputWithPooling(pooler_output=tensors["pooler_output"])


