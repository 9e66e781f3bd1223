"""A stream's visual memory in the language model's cache, chunk by chunk.

Every chunk of sampled frames is preprocessed, encoded and compressed on its own, with a method
that never reads the question (VidCom2 by default), then appended to the cache: the language
model prefills only the new chunk's kept tokens. The prompt of a question about the stream is

    head | chunk 1 | chunk 2 | ... | chunk k | question

where ``head`` is what the chat template puts before the video (system turn, user turn) and each
chunk is the video segment of a prompt about that chunk alone (``VideoAdapter.video_start`` up
to ``prefix_length``: for Qwen ``<|vision_start|>`` pads ``<|vision_end|>``). Chunks are laid out
as the model lays out several videos in one prompt (``VideoAdapter.appended_positions``): each
starts where the one before ended, so M-RoPE time positions keep counting, LLaVA's dense
positions close up, and the chunk's frame indices (the stream's, in the processor's metadata)
carry the stream's time into Qwen2.5-VL's temporal scaling and Qwen3-VL's timestamps.

A question is answered on a copy of the cache, exactly as ``chat`` answers on a video's cached
prefix. When the held tokens pass the budget, chunks are dropped or recompressed
(``forget.plan_forgetting``) and the cache is cropped to the last unchanged chunk and refilled
from there; no chunk is ever encoded twice (the kept encoder output of each chunk is held).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..compression import llm_stages, select
from ..compression.vidcom2 import keep_lowest, similarity, vidcom2_scores
from ..engine import OPENING_QUESTION, Engine
from ..errors import InputError
from ..models.items import CompressedItem, PrefixCache, QuestionError
from ..models.sizing import PixelBounds
from ..options import CompressionOptions, GenerationOptions, check_generation
from ..timing import StageTimer
from .forget import ForgetMode, HeldCount, plan_forgetting


@dataclass
class Chunk:
    """One compressed chunk as the stream holds it (tensors on the model's device, but the
    uncompressed positions, which are only read on the host)."""

    index: int  # in the stream, from 0
    start_s: float  # stream time of its first frame
    end_s: float  # stream time after its last frame
    frames: int
    input_ids: torch.Tensor  # (S',) the kept tokens of the segment
    mm_token_type_ids: torch.Tensor | None
    full_positions: torch.Tensor  # (P, S) the uncompressed segment's positions, own prompt
    kept: torch.Tensor  # (S',) indices of the kept tokens into the uncompressed segment
    output: Any  # the kept encoder output, as the model reads it
    features: torch.Tensor  # (F, D) the kept visual features, rows of ``output`` in order
    feature_tokens: torch.Tensor  # (S',) bool: which kept tokens are those features
    visual_full: int  # visual tokens before compression
    structural_rows: int  # rows of ``output`` after the features (LLaVA's newline)
    level: int = 0  # times recompressed by ``--forget compress``
    positions: torch.Tensor | None = None  # (P, S') where the stream lays it out now

    @property
    def tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def structural(self) -> int:
        return self.tokens - int(self.features.shape[0])


@dataclass
class ChunkReport:
    """What adding one chunk did."""

    index: int
    start_s: float
    end_s: float
    visual_full: int
    visual_kept: int
    encode_ms: float  # preprocess, vision encoder and compression
    append_ms: float  # the language model's prefill of the new tokens (and any rebuild)
    dropped: int  # chunks forgotten by this addition
    recompressed: int  # chunks recompressed by this addition
    rebuilt_tokens: int  # tokens refilled into the cache beyond the new chunk's


@dataclass
class StreamAnswer:
    """One answer about the stream as held when it was asked."""

    question: str
    answer: str
    start_s: float  # stream time covered: first held frame ...
    end_s: float  # ... to after the last one
    chunks_held: int
    chunks_seen: int
    tokens_held: int
    prompt_tokens: int
    generated: int
    token_ids: list[int]
    latency_ms: float  # from the question to the answer's last token
    prefill_ms: float  # the question's own tokens
    decode_ms: float


@dataclass
class MemoryStats:
    """Counters over the stream's life."""

    chunks_seen: int = 0
    encoder_calls: int = 0
    dropped: int = 0
    recompressed: int = 0
    rebuilds: int = 0
    peak_tokens: int = 0
    frames: int = 0
    encode_ms: list[float] = field(default_factory=list)


class StreamMemory:
    """The held chunks of one stream and the language model's cache over them.

    Thread-safe: ``add`` (the chunker's thread) and ``ask`` (the questions') take one lock for
    the model's work; preprocessing a chunk (CPU only) runs outside it.
    """

    def __init__(self, engine: Engine, compression: CompressionOptions, fps: float,
                 memory_tokens: int | None = None, forget: ForgetMode = "oldest",
                 bounds: PixelBounds | None = None, lock: threading.Lock | None = None
                 ) -> None:
        adapter = engine.adapter
        engine.accept(compression)
        if llm_stages(compression.method, adapter.compression_profile,
                      dict(compression.method_options)):
            raise InputError(f"--method {compression.method}: it works inside the language "
                             "model on the question's tokens, so a stream's chunks cannot be "
                             "compressed before the question; choose one that runs before it")
        self.engine = engine
        self.adapter = adapter
        self.compression = compression
        self.fps = fps
        self.memory_tokens = memory_tokens
        self.forget = forget
        self.bounds = bounds
        self.chunks: list[Chunk] = []
        self.stats = MemoryStats()
        self._head: CompressedItem | None = None
        self._head_next = 0
        self._cache: Any = None
        self._cached = 0  # tokens in the cache
        self._next_position = 0  # the first position after the held stream
        self._lock = lock or threading.Lock()  # shared where the engine does other work too

    # --- what is held ------------------------------------------------------------------------

    @property
    def tokens_held(self) -> int:
        """Tokens in the cache: the head and every held chunk."""
        return self._cached

    @property
    def head_tokens(self) -> int:
        return 0 if self._head is None else self._head.length

    def time_range(self) -> tuple[float, float]:
        if not self.chunks:
            return 0.0, 0.0
        return self.chunks[0].start_s, self.chunks[-1].end_s

    # --- adding a chunk ----------------------------------------------------------------------

    def add(self, frames: np.ndarray, times: list[float]) -> ChunkReport:
        """Encode and compress one chunk of frames (their stream times in ``times``), append it
        to the cache and forget what the budget asks. Frames are padded with copies of the last
        to the family's multiple (Qwen: 2)."""
        if not len(frames):
            raise ValueError("a chunk needs at least one frame")
        multiple = self.adapter.frames_multiple
        pad = -len(frames) % multiple
        if pad:
            frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
        # the frames' places on the stream's 1/fps grid (gaps where frames were skipped): what
        # Qwen3-VL's timestamps are computed from, so they read stream time
        indices = [round(second * self.fps) for second in times]
        indices += [indices[-1] + step for step in range(1, pad + 1)]
        metadata = {"fps": self.fps, "frames_indices": indices,
                    "total_num_frames": indices[-1] + 1,
                    "duration": (indices[-1] + 1) / self.fps}
        timer = StageTimer(self.engine.device)
        with timer.stage("preprocess"):
            try:
                item = self.adapter.preprocess(frames, metadata, OPENING_QUESTION, self.bounds)
            except QuestionError as error:  # not reached with the fixed opening question
                raise InputError(str(error)) from None
        with self._lock:
            with timer.stage("encode"):
                chunk = self._encode(item, times)
            with timer.stage("append"):
                self._check_budget(chunk)
                self.chunks.append(chunk)
                dropped, recompressed, changed = self._forget()
                refilled = self._refill(len(self.chunks) - 1 if changed is None else changed)
            self.stats.chunks_seen += 1
            self.stats.frames += len(times)
            self.stats.peak_tokens = max(self.stats.peak_tokens, self._cached)
        encode_ms = timer.stages_ms["preprocess"] + timer.stages_ms["encode"]
        self.stats.encode_ms.append(encode_ms)
        return ChunkReport(index=chunk.index, start_s=chunk.start_s, end_s=chunk.end_s,
                           visual_full=chunk.visual_full,
                           visual_kept=int(chunk.features.shape[0]), encode_ms=encode_ms,
                           append_ms=timer.stages_ms["append"], dropped=dropped,
                           recompressed=recompressed,
                           rebuilt_tokens=refilled - chunk.tokens)

    @torch.inference_mode()
    def _encode(self, host_item: Any, times: list[float]) -> Chunk:
        adapter = self.adapter
        item = adapter.to_device(host_item)
        encoded = adapter.encode(item, self.engine.vision_signals)
        self.stats.encoder_calls += 1
        options = self.compression
        plan = select(encoded.features, options.ratio, options.method, seed=options.seed,
                      grid=encoded.grid, signals=encoded.signals,
                      options=dict(options.method_options),
                      profile=adapter.compression_profile)
        compressed = adapter.compress(item, encoded, plan)
        ids = host_item.inputs["input_ids"][0].tolist()
        start, end = adapter.video_start(ids), adapter.prefix_length(ids)
        dropped = plan.total_full - plan.total_kept  # every dropped token is a video token
        kept_end = end - dropped
        if self._head is None:
            self._head = CompressedItem(
                input_ids=compressed.input_ids[:start],
                mm_token_type_ids=None if compressed.mm_token_type_ids is None
                else compressed.mm_token_type_ids[:start],
                position_ids=compressed.position_ids[:, :start], output=None,
                full_length=start)
            self._head_next = int(item.positions[:, :start].max()) + 1 if start else 0
        keep = torch.ones(item.length, dtype=torch.bool)
        keep[item.video_token_mask] = adapter.feature_keep_mask(plan).cpu()
        kept = keep[start:end].nonzero().squeeze(1)
        segment_ids = compressed.input_ids[start:kept_end]
        # the kept placeholders are the output's rows in order: the features first, then any
        # structural rows (LLaVA's newline after the video)
        placeholders = segment_ids == adapter.placeholder_token_id
        feature_rows = int(plan.flat_mask().sum())
        feature_tokens = placeholders.clone()
        rows = placeholders.nonzero().squeeze(1)
        feature_tokens[rows[feature_rows:]] = False
        features = plan.apply(encoded.features.reshape(-1, encoded.features.shape[-1]))[
            plan.flat_mask().nonzero().squeeze(1)]
        types = compressed.mm_token_type_ids
        return Chunk(index=self.stats.chunks_seen, start_s=times[0],
                     end_s=times[-1] + 1.0 / self.fps, frames=len(times),
                     input_ids=segment_ids,
                     mm_token_type_ids=None if types is None else types[start:kept_end],
                     full_positions=item.positions[:, start:end].cpu(), kept=kept,
                     output=compressed.output, features=features,
                     feature_tokens=feature_tokens, visual_full=plan.total_full,
                     structural_rows=int(rows.numel()) - feature_rows)

    def _check_budget(self, chunk: Chunk) -> None:
        if self.memory_tokens is None:
            return
        least = self.head_tokens + chunk.tokens
        if least > self.memory_tokens:
            raise InputError(f"--memory-tokens {self.memory_tokens}: one chunk and the prompt's "
                             f"head take {least} tokens; raise it, or lower --chunk or --ratio")

    # --- forgetting --------------------------------------------------------------------------

    def _forget(self) -> tuple[int, int, int | None]:
        """Apply the budget: (chunks dropped, chunks recompressed, index of the first held
        chunk whose tokens changed or None)."""
        if self.memory_tokens is None:
            return 0, 0, None
        held = [HeldCount(chunk.tokens, chunk.structural + max(1, chunk.frames), chunk.level)
                for chunk in self.chunks]
        plan = plan_forgetting(held, self.head_tokens, self.memory_tokens, self.forget)
        changed = plan.changed_from(held)
        if changed is None:
            return 0, 0, None
        kept_chunks, dropped, recompressed = [], 0, 0
        for chunk, count in zip(self.chunks, plan.counts, strict=True):
            if count == 0:
                dropped += 1
                continue
            if count != chunk.tokens:
                self._recompress(chunk, count)
                recompressed += 1
            kept_chunks.append(chunk)
        self.chunks = kept_chunks
        self.stats.dropped += dropped
        self.stats.recompressed += recompressed
        self.stats.rebuilds += 1
        # a dropped chunk moves every later one: the first changed place is where it was
        return dropped, recompressed, changed

    def _recompress(self, chunk: Chunk, tokens: int) -> None:
        """Keep ``tokens`` of the chunk's tokens: its structural ones and the visual ones that
        VidCom2's score ranks least like the rest of what the chunk kept (the chunk's kept
        features scored as one unit: frame and video centres are those of the chunk)."""
        visual = tokens - chunk.structural
        scores = vidcom2_scores(similarity(chunk.features[None]))
        keep_rows = keep_lowest(scores, torch.tensor([visual], device=scores.device))[0]
        rows = keep_rows.nonzero().squeeze(1)
        extra = torch.arange(chunk.features.shape[0], chunk.features.shape[0]
                             + chunk.structural_rows, device=rows.device)
        output_rows = torch.cat([rows, extra])
        chunk.output = self.adapter.map_output(
            chunk.output, lambda tensor: tensor.index_select(0, output_rows.to(tensor.device)))
        token_keep = torch.ones(chunk.tokens, dtype=torch.bool, device=chunk.input_ids.device)
        token_keep[chunk.feature_tokens] = keep_rows.to(token_keep.device)
        kept = token_keep.nonzero().squeeze(1)
        chunk.input_ids = chunk.input_ids.index_select(0, kept)
        if chunk.mm_token_type_ids is not None:
            chunk.mm_token_type_ids = chunk.mm_token_type_ids.index_select(0, kept)
        chunk.kept = chunk.kept.index_select(0, kept.cpu())
        chunk.feature_tokens = chunk.feature_tokens.index_select(0, kept)
        chunk.features = chunk.features.index_select(0, rows)
        chunk.level += 1

    # --- the cache ---------------------------------------------------------------------------

    def held(self, chunks: list[Chunk]) -> CompressedItem:
        """The head and ``chunks`` (the held ones, in order) as one sequence, each chunk's
        positions laid after the one before (and kept on the chunk)."""
        head = self._head
        next_position = self._head_next
        for chunk in chunks:
            positions, next_position = self.adapter.appended_positions(
                chunk.full_positions, chunk.kept.cpu(), next_position)
            chunk.positions = positions.to(self.engine.device)
        self._next_position = next_position
        types = None if head.mm_token_type_ids is None else torch.cat(
            [head.mm_token_type_ids, *[chunk.mm_token_type_ids for chunk in chunks]])
        return CompressedItem(
            input_ids=torch.cat([head.input_ids, *[chunk.input_ids for chunk in chunks]]),
            mm_token_type_ids=types,
            position_ids=torch.cat([head.position_ids, *[chunk.positions for chunk in chunks]],
                                   dim=1),
            output=None, full_length=head.full_length + sum(
                int(chunk.full_positions.shape[1]) for chunk in chunks))

    def _refill(self, first: int) -> int:
        """Crop the cache to the chunks before ``first`` and prefill the rest after them;
        returns the tokens prefilled beyond the head."""
        held = self.held(self.chunks)
        start = self.head_tokens + sum(chunk.tokens for chunk in self.chunks[:first])
        if self._cache is None:
            first, start = 0, 0
        elif start < self._cached:
            self._cache.crop(start - self._cached)  # a negative count: tokens removed
        self._cache = self.adapter.extend_cache(
            held, start, [chunk.output for chunk in self.chunks[first:]], self._cache)
        self._cached = held.length
        return held.length - max(start, self.head_tokens)

    # --- questions ---------------------------------------------------------------------------

    def ask(self, question: str, generation: GenerationOptions,
            on_text: Callable[[str], None] | None = None, fresh: bool = False
            ) -> StreamAnswer:
        """Answer ``question`` about what is held, on a copy of the cache. With ``fresh`` the
        held stream is prefilled again in one pass into a new cache first (the one-shot
        reference the incremental cache is checked against)."""
        if not question.strip():
            raise InputError("question: the question is empty")
        check_generation(generation)
        began = time.perf_counter()
        with self._lock:
            if not self.chunks:
                raise InputError("nothing of the stream has been encoded yet")
            try:
                suffix = self.adapter.question_suffix(question).to(self.engine.device)
            except QuestionError as error:
                raise InputError(str(error)) from None
            held = self.held(self.chunks)
            item = self._with_question(held, suffix)
            self._check_context(item, generation)
            cache = self._cache
            if fresh:
                cache = self.adapter.extend_cache(
                    held, 0, [chunk.output for chunk in self.chunks], None)
            prefix = PrefixCache(cache=cache, lengths=[held.length], prefill_ms=0.0)
            if generation.do_sample:
                torch.manual_seed(generation.seed)
            result = self.adapter.generate(
                [item], max_new_tokens=generation.max_new_tokens,
                min_new_tokens=generation.min_new_tokens, do_sample=generation.do_sample,
                prefix=prefix, on_text=on_text, **generation.sampling_kwargs())
            start_s, end_s = self.time_range()
            return StreamAnswer(
                question=question, answer=result.texts[0], start_s=start_s, end_s=end_s,
                chunks_held=len(self.chunks), chunks_seen=self.stats.chunks_seen,
                tokens_held=held.length, prompt_tokens=item.length,
                generated=len(result.token_ids[0]), token_ids=result.token_ids[0],
                latency_ms=(time.perf_counter() - began) * 1000.0,
                prefill_ms=result.timing.prefill_ms, decode_ms=result.timing.decode_ms)

    def _with_question(self, held: CompressedItem, suffix: torch.Tensor) -> CompressedItem:
        """The held stream followed by a question's tokens, text positions after the last
        chunk's."""
        count = int(suffix.shape[0])
        rows = held.position_ids.shape[0]
        positions = (torch.arange(count, device=suffix.device) + self._next_position)
        types = None if held.mm_token_type_ids is None else torch.cat(
            [held.mm_token_type_ids, torch.zeros(count, dtype=held.mm_token_type_ids.dtype,
                                                 device=suffix.device)])
        return CompressedItem(
            input_ids=torch.cat([held.input_ids, suffix.to(held.input_ids.dtype)]),
            mm_token_type_ids=types,
            position_ids=torch.cat([held.position_ids,
                                    positions.expand(rows, count).to(held.position_ids.dtype)],
                                   dim=1),
            output=None, full_length=held.full_length + count)

    def _check_context(self, item: CompressedItem, generation: GenerationOptions) -> None:
        reach = int(item.position_ids.max()) + 1 + generation.max_new_tokens
        context = self.adapter.context_length
        if reach > context:
            raise InputError(f"the held stream and question reach position {reach} with the "
                             f"answer, past the model's context of {context}; lower "
                             "--memory-tokens or --max-new-tokens")
