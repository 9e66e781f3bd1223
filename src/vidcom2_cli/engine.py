"""One question about one video, end to end: decode -> encode -> compress -> generate.

The engine owns the order of the stages and their timings; what each stage does lives in
``video`` (decoding), ``models`` (the family adapters) and ``compression`` (the selectors).
Several requests can share one ``generate`` call, each with its own plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .compression import KeepPlan, get_method, select
from .compression.checks import check_ratio
from .models import LoadedModel, LoadOptions, VideoAdapter, load_adapter
from .models.base import CompressedItem, EncodedVideo, GenerationResult, PreparedItem
from .timing import PeakMemory, StageTimer, peak_memory, reset_peak_memory
from .video import (
    DEFAULT_MAX_FRAMES,
    DEFAULT_NUM_FRAMES,
    SampledVideo,
    VideoError,
    load_video,
    sample_indices,
)


class InputError(ValueError):
    """A request or option that cannot be run; the message names it and says why."""


@dataclass(frozen=True)
class SamplingOptions:
    """Which frames to decode: ``frames`` evenly spaced, or ``fps`` per second up to a cap."""

    frames: int = DEFAULT_NUM_FRAMES
    fps: float | None = None
    max_frames: int = DEFAULT_MAX_FRAMES


@dataclass(frozen=True)
class CompressionOptions:
    ratio: float = 0.25
    method: str = "vidcom2"
    seed: int = 0


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 128
    min_new_tokens: int | None = None  # set equal to max_new_tokens to force a token count
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    seed: int = 0

    def sampling_kwargs(self) -> dict[str, float]:
        if not self.do_sample:
            return {}
        return {key: value for key, value in (("temperature", self.temperature),
                                              ("top_p", self.top_p)) if value is not None}


@dataclass(frozen=True)
class Request:
    video: str
    question: str
    id: str | None = None


@dataclass
class PreparedRequest:
    """A request after decoding and preprocessing, on the CPU: ready for the vision encoder.

    ``stages_ms`` has ``video_decode`` and ``preprocess``, timed where ``Engine.prepare`` ran
    (a worker thread in batch mode), without waiting for the device.
    """

    request: Request
    video: SampledVideo
    item: PreparedItem  # CPU tensors
    stages_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class EncodedRequest:
    """A request after decoding, preprocessing and the vision encoder: ready to compress."""

    request: Request
    video: SampledVideo
    item: PreparedItem
    encoded: EncodedVideo
    stages_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenCounts:
    visual_full: int  # video placeholder tokens before compression (structural ones included)
    visual_kept: int
    per_frame_kept: list[int]  # one entry per temporal unit
    visual_structural: int  # placeholders that belong to no unit (LLaVA's newline)
    prompt_full: int
    prompt_kept: int
    generated: int


@dataclass(frozen=True)
class Answer:
    """Everything one ask produced; rendered by ``report``."""

    request: Request
    answer: str
    model: str
    method: str
    ratio: float
    plan: KeepPlan
    video: SampledVideo
    frames_per_unit: int
    tokens: TokenCounts
    timing_ms: dict[str, float]
    memory: PeakMemory
    random_weights: bool


class Engine:
    """A loaded model and its adapter, answering requests."""

    def __init__(self, loaded: LoadedModel, adapter: VideoAdapter) -> None:
        self.loaded = loaded
        self.adapter = adapter

    @classmethod
    def load(cls, model: str, options: LoadOptions = LoadOptions()) -> Engine:
        return cls(*load_adapter(model, options))

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

        Uses neither the model nor the device, so several threads may call it while the
        model works (each decode opens its own video reader).
        """
        if not request.question.strip():
            raise InputError("question: the question is empty")
        timer = StageTimer(torch.device("cpu"))  # CPU work: never wait for the device here
        with timer.stage("video_decode"):
            video = load_video(Path(request.video), num_frames=sampling.frames, fps=sampling.fps,
                               max_frames=sampling.max_frames,
                               multiple_of=self.adapter.frames_multiple)
        with timer.stage("preprocess"):
            item = self.adapter.preprocess(video.frames, video.metadata(), request.question)
        return PreparedRequest(request, video, item, timer.stages_ms)

    def encode_prepared(self, prepared: PreparedRequest) -> EncodedRequest:
        """Copy a prepared request to the device and run the vision encoder, timed.

        The copy is added to ``preprocess``; ``vision`` is the encoder alone. The encoded request
        keeps no pixels on the device.
        """
        timer = StageTimer(self.device, dict(prepared.stages_ms))
        with timer.stage("preprocess"):
            item = self.adapter.to_device(prepared.item)
        with timer.stage("vision"):
            encoded = self.adapter.encode(item)
        return EncodedRequest(prepared.request, prepared.video, item.without_pixels(), encoded,
                              timer.stages_ms)

    def compress(self, encoded: EncodedRequest, options: CompressionOptions
                 ) -> tuple[KeepPlan, CompressedItem, float]:
        """Choose and apply a plan; returns it with the compressed item and its time in ms."""
        timer = StageTimer(self.device)
        with timer.stage("compress"):
            plan = select(encoded.encoded.features, options.ratio, options.method,
                          seed=options.seed, grid=encoded.encoded.grid)
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

    def generate(self, items: list[CompressedItem], options: GenerationOptions
                 ) -> GenerationResult:
        if options.do_sample:
            torch.manual_seed(options.seed)
        return self.adapter.generate(items, max_new_tokens=options.max_new_tokens,
                                     min_new_tokens=options.min_new_tokens,
                                     do_sample=options.do_sample, **options.sampling_kwargs())

    def answer(self, encoded: list[EncodedRequest], compression: CompressionOptions,
               generation: GenerationOptions) -> list[Answer]:
        """Compress each encoded request with its own plan and generate for all in one call."""
        check_options(compression, generation)
        compressed = [self.compress(request, compression) for request in encoded]
        for request, (_, item, _) in zip(encoded, compressed, strict=True):
            self.check_context(request, item, generation)
        result = self.generate([item for _, item, _ in compressed], generation)
        answers = []
        for index, (request, (plan, item, compress_ms)) in enumerate(
                zip(encoded, compressed, strict=True)):
            timing = {**request.stages_ms, "compress": compress_ms,
                      "prefill": result.timing.prefill_ms, "decode": result.timing.decode_ms,
                      "decode_per_token": result.timing.decode_ms_per_token}
            timing["llm_generation"] = result.timing.total_ms
            timing["total"] = sum(timing[key] for key in (
                "video_decode", "preprocess", "vision", "compress", "prefill", "decode"))
            answers.append(Answer(
                request=request.request, answer=result.texts[index],
                model=self.loaded.reference, method=plan.method, ratio=plan.ratio, plan=plan,
                video=request.video, frames_per_unit=self.adapter.frames_multiple,
                tokens=token_counts(request.item, plan, item, len(result.token_ids[index])),
                timing_ms=timing, memory=peak_memory(self.devices),
                random_weights=self.random_weights))
        return answers

    def ask(self, request: Request, sampling: SamplingOptions = SamplingOptions(),
            compression: CompressionOptions = CompressionOptions(),
            generation: GenerationOptions = GenerationOptions()) -> Answer:
        check_options(compression, generation)
        reset_peak_memory(self.devices)
        return self.answer([self.encode(request, sampling)], compression, generation)[0]


def check_options(compression: CompressionOptions, generation: GenerationOptions) -> None:
    """InputError naming the option, before any expensive work."""
    try:
        check_ratio(compression.ratio)
    except ValueError as error:
        raise InputError(f"--ratio: {error}") from None
    try:
        get_method(compression.method)
    except ValueError as error:
        raise InputError(f"--method: {error}") from None
    if generation.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens: must be at least 1, got {generation.max_new_tokens}")


def check_sampling(sampling: SamplingOptions) -> None:
    """InputError naming the sampling options, before any video is opened or model loaded."""
    try:
        sample_indices(1, num_frames=sampling.frames if sampling.fps is None else None,
                       fps=sampling.fps, source_fps=1.0, max_frames=sampling.max_frames)
    except VideoError as error:
        raise InputError(f"--frames/--fps/--max-frames: {error}") from None


def token_counts(item: PreparedItem, plan: KeepPlan, compressed: CompressedItem,
                 generated: int) -> TokenCounts:
    visual_full = int(item.video_token_mask.sum())
    return TokenCounts(
        visual_full=visual_full,
        visual_kept=visual_full - (plan.total_full - plan.total_kept),
        per_frame_kept=plan.counts,
        visual_structural=visual_full - plan.total_full,
        prompt_full=item.length,
        prompt_kept=compressed.length,
        generated=generated,
    )
