"""A loaded model answering questions about videos: decode -> encode -> compress -> generate.

The engine owns the order of the stages and their timings; what each stage does lives in
``video`` (decoding), ``models`` (the family adapters) and ``compression`` (the selectors).
A runner prepares a video (CPU, any thread), encodes it, and hands the engine whole work:
``answer_groups`` takes questions about encoded videos and does the rest (compression per
setting, the shared prefix prefill, batched generate calls, retries part by part). The
single-video calls (``ask``, ``ask_many``, ``open``) serve the interactive commands.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from . import __version__
from .compression import KeepPlan, VisionSignals, get_method, llm_stages, select
from .errors import InputError, first_line
from .feature_cache import CachedEncoding, FeatureCache
from .models import LoadedModel, LoadOptions, VideoAdapter, load_adapter
from .models.base import (
    CompressedItem,
    GenerationResult,
    PrefixCache,
    PreparedItem,
    QuestionError,
    TextCallbacks,
)
from .models.conversation import head_key
from .models.loop_state import LLMTokens
from .models.sizing import PixelBounds
from .options import (
    CompressionOptions,
    GenerationOptions,
    SamplingOptions,
    check_compression,
    check_generation,
)
from .timing import (
    PeakMemory,
    StageTimer,
    is_out_of_memory,
    peak_memory,
    release_cached_memory,
    reset_peak_memory,
)
from .video import SampledVideo, load_video
from .work import (
    Answer,
    EncodedRequest,
    PreparedRequest,
    Question,
    QuestionGroup,
    Request,
    TokenCounts,
    VideoContext,
)

OPENING_QUESTION = "Describe this video."
SIGNAL_PREFIX = "signal."  # feature-cache tensors that hold vision signals, not encoder output
# The stages every answer reports, in pipeline order; their sum is ``total``.
STAGES = ("feature_cache", "video_decode", "preprocess", "vision", "compress", "prefill",
          "decode")


# Per item of a generate call, whether to end its generation now (see VideoAdapter.generate).
StopChecks = Sequence[Callable[[], bool] | None] | None


class Engine:
    """A loaded model and its adapter, answering requests."""

    def __init__(self, loaded: LoadedModel, adapter: VideoAdapter,
                 feature_cache: FeatureCache | None = None, load_seconds: float = 0.0) -> None:
        self.loaded = loaded
        self.adapter = adapter
        self.feature_cache = feature_cache
        self.load_seconds = load_seconds
        self._fingerprint: str | None = None
        # what the vision encoder reads besides the features, for the methods to be run
        self.vision_signals: frozenset[str] = frozenset()

    def accept(self, compression: CompressionOptions) -> None:
        """Check compression options against this model (InputError naming the option) and
        expect the vision signals its method needs."""
        profile = self.adapter.compression_profile
        check_compression(compression, profile)
        try:
            self.adapter.check_llm_stages(llm_stages(compression.method, profile,
                                                     dict(compression.method_options)))
        except ValueError as error:
            raise InputError(f"--method {compression.method}: {error}") from None
        self.expect_methods([compression.method])

    def expect_methods(self, methods: Iterable[str]) -> None:
        """Make every later encoding carry the vision signals ``methods`` need (on top of the
        ones already expected). Methods that need none (VidCom2) leave the encoder unhooked."""
        needed = {signal for method in methods for signal in get_method(method).signals}
        self.vision_signals = self.vision_signals | needed

    @classmethod
    def load(cls, model: str, options: LoadOptions = LoadOptions(),
             feature_cache: FeatureCache | None = None) -> Engine:
        start = time.perf_counter()
        loaded, adapter = load_adapter(model, options)
        return cls(loaded, adapter, feature_cache, time.perf_counter() - start)

    def run_info(self) -> dict[str, object]:
        """What answers: the tool's version, the model's load time, device, dtype, attention."""
        return {"version": __version__, "model_load_s": round(self.load_seconds, 3),
                "device": str(self.device),
                "dtype": str(self.loaded.dtype).removeprefix("torch."),
                "attention": self.loaded.attention}

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def devices(self) -> list[torch.device]:
        """Every device the model's memory is on (several GPUs with a device_map)."""
        return self.loaded.devices

    @property
    def random_weights(self) -> bool:
        return self.loaded.reference.startswith("random:")

    def encode(self, request: Request, sampling: SamplingOptions) -> EncodedRequest:
        """Decode the sampled frames, run the processor and the vision encoder, timed."""
        return self.encode_prepared(self.prepare(request, sampling))

    def prepare(self, request: Request, sampling: SamplingOptions) -> PreparedRequest:
        """Decode the sampled frames and run the processor, timed: the CPU half of ``encode``.

        With a feature cache, a hit replaces both by the stored entry (and the question's
        prompt built on it). Uses neither the model nor the device, so several threads may
        call it while the model works (each decode opens its own video reader).
        """
        if not request.question.strip():
            raise InputError("question: the question is empty")
        timer = StageTimer(torch.device("cpu"))  # CPU work: never wait for the device here
        key = None
        # Only a regular file is hashed: a missing one gets the decoder's own message, and a
        # pipe is not read to its end before decoding.
        if self.feature_cache is not None and Path(request.video).is_file():
            with timer.stage("feature_cache"):
                # a cached item's prompt keeps the messages before its video (with_question
                # replaces only what follows it), so they are part of the key
                key = self.feature_cache.key(
                    Path(request.video), self.fingerprint,
                    sampling_key(sampling, self.adapter.frames_multiple, self.vision_signals)
                    + head_key(request.question))
                cached = self.feature_cache.load(key)
            if cached is not None:
                with timer.stage("preprocess"), _as_input_error(QuestionError):
                    item = self.adapter.with_question(cached.item, request.question)
                video = SampledVideo(frames=np.zeros((0, 0, 0, 3), dtype=np.uint8),
                                     indices=cached.indices, info=cached.info,
                                     padded=cached.padded,
                                     substituted_frames=cached.substituted,
                                     resized=cached.resized)
                return PreparedRequest(request, video, item, _stage_times(timer), cached, key)
        with timer.stage("video_decode"):
            video = load_video(Path(request.video), num_frames=sampling.frames, fps=sampling.fps,
                               max_frames=sampling.max_frames,
                               multiple_of=self.adapter.frames_multiple)
        with timer.stage("preprocess"), _as_input_error(QuestionError):
            item = self.adapter.preprocess(video.frames, video.metadata(), request.question,
                                           self.pixel_bounds(sampling))
        return PreparedRequest(request, video, item, _stage_times(timer), key=key)

    def encode_prepared(self, prepared: PreparedRequest) -> EncodedRequest:
        """Copy a prepared request to the device and run the vision encoder, timed (or take
        the encoder output from the feature cache: ``vision`` is then 0).

        The copy is added to ``preprocess``; ``vision`` is the encoder alone. The encoded request
        keeps no pixels on the device. A miss is written to the feature cache.
        """
        timer = StageTimer(self.device, dict(prepared.stages_ms))
        timer.stages_ms.setdefault("vision", 0.0)
        host_item = prepared.item.without_pixels()
        with timer.stage("preprocess"):
            item = self.adapter.to_device(prepared.item)
        if prepared.cached is not None:
            with timer.stage("feature_cache"):
                tensors = {name: tensor.to(self.device)
                           for name, tensor in prepared.cached.tensors.items()}
                signals = {name.removeprefix(SIGNAL_PREFIX): tensors.pop(name)
                           for name in list(tensors) if name.startswith(SIGNAL_PREFIX)}
                encoded = self.adapter.describe(self.adapter.output_from_tensors(tensors),
                                                item.inputs)
                encoded.signals = VisionSignals(**signals) if signals else None
        else:
            with timer.stage("vision"):
                encoded = self.adapter.encode(item, self.vision_signals)
            if self.feature_cache is not None and prepared.key is not None:
                tensors = self.adapter.output_tensors(encoded.output)
                for name in self.vision_signals:
                    tensors[SIGNAL_PREFIX + name] = getattr(encoded.signals, name)
                with timer.stage("feature_cache"):
                    self.feature_cache.store(prepared.key, CachedEncoding(
                        tensors=tensors, item=host_item,
                        indices=list(prepared.video.indices), info=prepared.video.info,
                        padded=prepared.video.padded,
                        substituted=dict(prepared.video.substituted_frames),
                        resized=prepared.video.resized))
        return EncodedRequest(prepared.request, prepared.video, item.without_pixels(), encoded,
                              timer.stages_ms, host_item, prepared.feature_cache)

    def pixel_bounds(self, sampling: SamplingOptions) -> PixelBounds | None:
        """The per-frame pixel bounds ``sampling`` asks of this model (InputError when the
        model's family has none)."""
        try:
            return self.adapter.pixel_bounds(sampling.min_pixels, sampling.max_pixels)
        except ValueError as error:
            raise InputError(f"--min-pixels/--max-pixels: {error}") from None

    @property
    def fingerprint(self) -> str:
        """What makes this model's encoder output what it is, for feature-cache keys: the
        reference, the config, the processor's settings, the chat template, the dtype and the
        kind of device (the same weights give other rounding on another kind)."""
        if self._fingerprint is None:
            processor = self.adapter.processor
            parts = [self.loaded.reference, self.loaded.model.config.to_json_string(),
                     processor.video_processor.to_json_string(),
                     str(getattr(processor, "chat_template", None)),
                     str(len(processor.tokenizer)), repr(sorted(
                         self.adapter.processor_options.items())),
                     repr(self.adapter.default_pixel_bounds),
                     str(self.loaded.dtype), self.device.type]
            self._fingerprint = hashlib.sha256("\x00".join(parts).encode()).hexdigest()
        return self._fingerprint

    def compress(self, encoded: EncodedRequest, options: CompressionOptions
                 ) -> tuple[KeepPlan, CompressedItem, float]:
        """Choose and apply a plan; returns it with the compressed item and its time in ms."""
        timer = StageTimer(self.device)
        with timer.stage("compress"):
            plan = select(encoded.encoded.features, options.ratio, options.method,
                          seed=options.seed, grid=encoded.encoded.grid,
                          signals=encoded.encoded.signals, options=dict(options.method_options),
                          profile=self.adapter.compression_profile)
            item = self.adapter.compress(encoded.item, encoded.encoded, plan)
        return plan, item, timer.stages_ms["compress"]

    def check_context(self, request: EncodedRequest, item: CompressedItem,
                      generation: GenerationOptions) -> None:
        """InputError when the compressed prompt and the answer cannot fit the model's context.

        The limit is on positions: with Qwen's M-RoPE a video's tokens share temporal
        positions, so its prompt reaches a lower position than its token count.
        """
        prompt_positions = int(item.position_ids.max()) + 1
        context = self.adapter.context_length
        if prompt_positions + generation.max_new_tokens > context:
            raise InputError(
                f"{request.request.video}: the prompt is {item.length} tokens after compression "
                f"(reaching position {prompt_positions}) and up to {generation.max_new_tokens} "
                f"more are generated, but the model's context is {context} tokens; lower "
                "--frames or --ratio, shorten the question, or lower --max-new-tokens")

    def generate(self, items: list[CompressedItem], options: GenerationOptions,
                 prefix: PrefixCache | None = None, rows: list[int] | None = None,
                 on_text: TextCallbacks = None, stop: StopChecks = None) -> GenerationResult:
        """One generate call (``on_text`` and ``stop``: see ``VideoAdapter.generate``)."""
        if options.do_sample:
            torch.manual_seed(options.seed)
        return self.adapter.generate(items, max_new_tokens=options.max_new_tokens,
                                     min_new_tokens=options.min_new_tokens,
                                     do_sample=options.do_sample, prefix=prefix, rows=rows,
                                     on_text=on_text, stop=stop, **options.sampling_kwargs())

    def answer(self, encoded: list[EncodedRequest], compression: CompressionOptions,
               generation: GenerationOptions,
               on_text: Callable[[str], None] | None = None) -> list[Answer]:
        """Compress each encoded request with its own plan and generate for all in one call
        (``on_text``: the answer's text as it is generated, for a batch of one)."""
        self.accept(compression)
        check_generation(generation)
        compressed = [self.compress(request, compression) for request in encoded]
        for request, (_, item, _) in zip(encoded, compressed, strict=True):
            self.check_context(request, item, generation)
        result = self.generate([item for _, item, _ in compressed], generation,
                               on_text=on_text)
        memory = peak_memory(self.devices)
        return [self._answer(request, plan, request.item, item, result, index,
                             {**request.stages_ms, "compress": compress_ms}, memory)
                for index, (request, (plan, item, compress_ms)) in enumerate(
                    zip(encoded, compressed, strict=True))]

    def _answer(self, encoded: EncodedRequest, plan: KeepPlan, item: PreparedItem,
                compressed: CompressedItem, result: GenerationResult, index: int,
                stages_ms: dict[str, float], memory: PeakMemory, prefix_reused: int = 0,
                prefix_tokens: int = 0) -> Answer:
        """One item of a generate call's result as an ``Answer``; ``stages_ms`` has the times
        before prefill (stages this answer does not carry count 0)."""
        timing = {stage: stages_ms.get(stage, 0.0) for stage in STAGES[:5]}
        timing["prefix_prefill"] = stages_ms.get("prefix_prefill", 0.0)
        timing["prefill"] = timing["prefix_prefill"] + result.timing.prefill_ms
        timing["decode"] = result.timing.decode_ms
        timing["decode_per_token"] = result.timing.decode_ms_per_token
        timing["llm_generation"] = timing["prefill"] + timing["decode"]
        timing["total"] = sum(timing[stage] for stage in STAGES)
        return Answer(
            request=encoded.request, answer=result.texts[index], model=self.loaded.reference,
            method=plan.method, ratio=plan.ratio, plan=plan, video=encoded.video,
            frames_per_unit=self.adapter.frames_multiple,
            tokens=token_counts(item, plan, compressed, len(result.token_ids[index]),
                                prefix_reused, prefix_tokens,
                                None if result.llm_tokens is None else result.llm_tokens[index]),
            timing_ms=timing, memory=memory, random_weights=self.random_weights,
            feature_cache=encoded.feature_cache, run=self.run_info())

    # --- whole work: questions about encoded videos -------------------------------------------

    def answer_groups(self, groups: Sequence[QuestionGroup], generation: GenerationOptions,
                      batch_size: int = 1, reuse_prefix: bool = True
                      ) -> list[list[Answer | str]]:
        """Answer every question of ``groups``: for each group, in its questions' order, the
        ``Answer`` or the one-line error of that question.

        With ``reuse_prefix`` each video is compressed once per setting its questions ask for,
        ``batch_size`` (video, setting) prompt prefixes are prefilled in one batch, and the
        questions are answered ``batch_size`` per generate call, each on a copy of its video's
        prefix. Without, each group must be the one question its video was prepared with,
        answered on its whole prompt (one generate call per setting): the reference path.

        A failed call is tried again part by part before anyone gets its error: a failed
        prefill, each video alone; a failed generate call, each question alone (after an
        out-of-memory error the cached memory is released first). So one bad question never
        costs its neighbours their answers.
        """
        if not reuse_prefix:
            return self._answer_whole(list(groups), generation)
        parts = [(index, rows, setting) for index, group in enumerate(groups)
                 for setting, rows in _by_setting(group.questions)]
        outcomes: list[list[Answer | str]] = [["" for _ in group.questions] for group in groups]
        for start in range(0, len(parts), batch_size):
            chunk = parts[start:start + batch_size]
            answered = self._answer_shared(
                [(groups[index].video, setting, [groups[index].questions[row] for row in rows])
                 for index, rows, setting in chunk], generation, batch_size)
            for (index, rows, _), results in zip(chunk, answered, strict=True):
                for row, result in zip(rows, results, strict=True):
                    outcomes[index][row] = result
        return outcomes

    def _answer_shared(self, parts: list[tuple[EncodedRequest, CompressionOptions,
                                               list[Question]]],
                       generation: GenerationOptions, batch_size: int
                       ) -> list[list[Answer | str]]:
        """Each (video, setting, questions) part's outcomes: the parts' prefixes prefilled in
        one batch, their questions asked ``batch_size`` per generate call."""

        def run(chunk: list[tuple[EncodedRequest, CompressionOptions, list[Question]]]
                ) -> list[list[Answer | str]]:
            contexts = [self.context(video, setting) for video, setting, _ in chunk]
            prefix = self.prefill(contexts)
            asked = [(row, question.request) for row, (_, _, questions) in enumerate(chunk)
                     for question in questions]
            answers = iter([outcome for start in range(0, len(asked), batch_size)
                            for outcome in _together_or_alone(
                                lambda pairs: self.ask_contexts(contexts, prefix, pairs,
                                                                generation),
                                asked[start:start + batch_size], lambda _, failure: failure)])
            return [[next(answers) for _ in questions] for _, _, questions in chunk]

        return _together_or_alone(run, parts, lambda part, failure: [failure] * len(part[2]),
                                  before_alone=lambda: reset_peak_memory(self.devices))

    def _answer_whole(self, groups: list[QuestionGroup], generation: GenerationOptions
                      ) -> list[list[Answer | str]]:
        """``answer_groups`` without a shared prefix: one generate call per setting for the
        groups together, each on the prompt its video was prepared with."""
        for group in groups:
            if len(group.questions) != 1 or group.questions[0].request != group.video.request:
                raise ValueError("without prefix reuse a group is the one question its video "
                                 "was prepared with")

        def run(chunk: list[QuestionGroup]) -> list[list[Answer | str]]:
            outcomes: list[list[Answer | str]] = [[] for _ in chunk]
            for setting, rows in _by_setting([group.questions[0] for group in chunk]):
                answers = self.answer([chunk[row].video for row in rows], setting, generation)
                for row, answer in zip(rows, answers, strict=True):
                    outcomes[row] = [answer]
            return outcomes

        return _together_or_alone(run, groups, lambda _, failure: [failure],
                                  # each retried group reports its own peak
                                  before_alone=lambda: reset_peak_memory(self.devices))

    # --- one video, many questions ----------------------------------------------------------

    def context(self, encoded: EncodedRequest, compression: CompressionOptions) -> VideoContext:
        """Compress an encoded video once for every question to be asked about it."""
        self.accept(compression)
        plan, item, compress_ms = self.compress(encoded, compression)
        split = self.adapter.prefix_length(encoded.item.inputs["input_ids"][0].tolist())
        kept = split - (plan.total_full - plan.total_kept)  # every video token is in the prefix
        prefix = CompressedItem(
            input_ids=item.input_ids[:kept],
            mm_token_type_ids=None if item.mm_token_type_ids is None
            else item.mm_token_type_ids[:kept],
            position_ids=item.position_ids[:, :kept], output=item.output, full_length=split,
            stages=item.stages)
        return VideoContext(encoded, plan, compress_ms, prefix)

    def prefill(self, contexts: list[VideoContext]) -> PrefixCache:
        """Prefill the prefixes of several videos in one batch (left-padded)."""
        return self.adapter.prefill([context.prefix for context in contexts])

    def ask_contexts(self, contexts: list[VideoContext], prefix: PrefixCache,
                     asked: list[tuple[int, Request]], generation: GenerationOptions,
                     on_text: TextCallbacks = None, stop: StopChecks = None) -> list[Answer]:
        """Answer questions in one generate call, each on a copy of its video's prefilled
        prefix: ``asked`` pairs a row of ``contexts`` (and of ``prefix``) with a question
        (``on_text`` and ``stop``, one callback or one per question: see
        ``VideoAdapter.generate``).

        A video's first answer carries the times of the work shared by all its questions
        (decoding, encoding, compression, the prefix prefill); later ones carry only their own
        and report the prefix tokens they reused.
        """
        check_generation(generation)
        built = []
        for row, request in asked:
            context = contexts[row]
            timer = StageTimer(torch.device("cpu"))
            with timer.stage("preprocess"), _as_input_error(QuestionError):
                item = self.adapter.to_device(self.adapter.with_question(
                    context.encoded.host_item, request.question))
            with timer.stage("compress"):
                compressed = self.adapter.compress(item, context.encoded.encoded, context.plan)
            encoded = dataclasses.replace(context.encoded, request=request)
            self.check_context(encoded, compressed, generation)
            built.append((row, encoded, item, compressed, timer.stages_ms))
        result = self.generate([compressed for *_, compressed, _ in built], generation,
                               prefix=prefix, rows=[row for row, *_ in built], on_text=on_text,
                               stop=stop)
        memory = peak_memory(self.devices)
        answers = []
        for index, (row, encoded, item, compressed, own_ms) in enumerate(built):
            context = contexts[row]
            if context.reported:
                stages, reused = own_ms, prefix.lengths[row]
            else:
                stages = {**context.encoded.stages_ms,
                          "compress": context.compress_ms + own_ms["compress"],
                          "prefix_prefill": prefix.prefill_ms}
                stages["preprocess"] = stages.get("preprocess", 0.0) + own_ms["preprocess"]
                reused = 0
                context.reported = True
            answers.append(self._answer(encoded, context.plan, item, compressed, result, index,
                                        stages, memory, reused, prefix.lengths[row]))
        return answers

    def open(self, video: str, sampling: SamplingOptions, compression: CompressionOptions
             ) -> tuple[VideoContext, PrefixCache]:
        """Decode, encode, compress and prefill one video's prompt prefix, once for all the
        questions to come (each stage is announced to ``timing.stage_listener``).

        The processor needs a prompt, so it gets ``OPENING_QUESTION``; only the prefix of that
        prompt is kept, which is the same whatever the question.
        """
        self.accept(compression)
        reset_peak_memory(self.devices)
        prepared = self.prepare(Request(video, OPENING_QUESTION), sampling)
        context = self.context(self.encode_prepared(prepared), compression)
        return context, self.prefill([context])

    def ask_many(self, video: str, questions: list[str], sampling: SamplingOptions,
                 compression: CompressionOptions, generation: GenerationOptions,
                 on_text: Callable[[str], None] | None = None) -> Iterator[Answer]:
        """Answer several questions about one video from one decode, one encode, one
        compression and one prefix prefill; yields each answer as soon as it is ready."""
        self.accept(compression)
        check_generation(generation)
        if not questions:
            raise InputError("question: give at least one question")
        for question in questions:
            if not question.strip():
                raise InputError("question: a question is empty")
        context, prefix = self.open(video, sampling, compression)
        for question in questions:
            yield self.ask_contexts([context], prefix, [(0, Request(video, question))],
                                    generation, on_text)[0]

    def ask(self, request: Request, sampling: SamplingOptions = SamplingOptions(),
            compression: CompressionOptions = CompressionOptions(),
            generation: GenerationOptions = GenerationOptions(),
            on_text: Callable[[str], None] | None = None) -> Answer:
        self.accept(compression)
        check_generation(generation)
        reset_peak_memory(self.devices)
        return self.answer([self.encode(request, sampling)], compression, generation,
                           on_text)[0]


def sampling_key(sampling: SamplingOptions, frames_multiple: int,
                 signals: frozenset[str] = frozenset()) -> str:
    """The sampling options (and the vision signals read with the features) as part of a
    feature-cache key."""
    key = (f"frames={sampling.frames if sampling.fps is None else None},fps={sampling.fps},"
           f"max_frames={sampling.max_frames},multiple_of={frames_multiple},"
           f"pixels={sampling.min_pixels},{sampling.max_pixels}")
    return key + (f",signals={','.join(sorted(signals))}" if signals else "")


@contextmanager
def _as_input_error(kind: type[Exception]) -> Iterator[None]:
    """``kind`` raised inside becomes an InputError with the same one-line message."""
    try:
        yield
    except kind as error:
        raise InputError(str(error)) from None


def _stage_times(timer: StageTimer) -> dict[str, float]:
    return {stage: timer.stages_ms.get(stage, 0.0)
            for stage in ("feature_cache", "video_decode", "preprocess")}


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


Part = TypeVar("Part")
Outcome = TypeVar("Outcome")


def _by_setting(questions: Sequence[Question]) -> list[tuple[CompressionOptions, list[int]]]:
    """Each compression setting of the questions with their positions, in order of first use
    (settings compared by value: their repr, as an option may hold an unhashable dict)."""
    settings: dict[str, tuple[CompressionOptions, list[int]]] = {}
    for row, question in enumerate(questions):
        settings.setdefault(repr(question.compression), (question.compression, []))[1].append(row)
    return list(settings.values())


def _together_or_alone(run: Callable[[list[Part]], list[Outcome]], parts: list[Part],
                       failed: Callable[[Part, str], Outcome],
                       before_alone: Callable[[], None] = lambda: None) -> list[Outcome]:
    """``run(parts)``, one outcome per part; when it fails, each part alone (``before_alone``
    called first), and a part that fails alone gets ``failed(part, message)``.

    After an out-of-memory error the cached CUDA memory is released, outside the ``except``
    block, so that the failed call's traceback (and the activations its frames hold) is gone.
    """
    if not parts:
        return []
    try:
        return run(parts)
    except Exception as error:
        failure, out_of_memory = _failure(error)
    if out_of_memory:
        release_cached_memory()
    if len(parts) == 1:
        return [failed(parts[0], failure)]
    outcomes = []
    for part in parts:
        before_alone()
        outcomes += _together_or_alone(run, [part], failed, before_alone)
    return outcomes


def _failure(error: Exception) -> tuple[str, bool]:
    """An error as its question's one-line message, and whether it means out of memory."""
    if isinstance(error, InputError):  # e.g. one prompt too long for the context
        return first_line(error), False
    return f"{type(error).__name__}: {first_line(error)}", is_out_of_memory(error)
