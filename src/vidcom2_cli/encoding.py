"""A request's video made ready for the language model: decoded, preprocessed, encoded.

``VideoEncoder`` is the engine's front half. ``prepare`` decodes the sampled frames and runs
the processor (CPU only, any thread); ``encode_prepared`` copies the result to the device and
runs the vision encoder, reading the vision signals the expected methods need. With a feature
cache, a hit replaces all three by the stored entry and a miss is written to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .compression import VisionSignals
from .errors import InputError
from .feature_cache import CachedEncoding, FeatureCache
from .models import LoadedModel, VideoAdapter
from .models.conversation import head_key
from .models.items import QuestionError
from .models.sizing import PixelBounds
from .options import SamplingOptions
from .timing import StageTimer
from .video import SampledVideo, load_video
from .work import EncodedRequest, PreparedRequest, Request

SIGNAL_PREFIX = "signal."  # feature-cache tensors that hold vision signals, not encoder output


class VideoEncoder:
    """Decoding, preprocessing and the vision encoder for one loaded model."""

    def __init__(self, loaded: LoadedModel, adapter: VideoAdapter,
                 feature_cache: FeatureCache | None = None) -> None:
        self.loaded = loaded
        self.adapter = adapter
        self.feature_cache = feature_cache
        self._fingerprint: str | None = None
        # what the vision encoder reads besides the features, for the methods to be run
        self.vision_signals: frozenset[str] = frozenset()

    @property
    def device(self) -> torch.device:
        return self.loaded.device

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

    def prepare(self, request: Request, sampling: SamplingOptions) -> PreparedRequest:
        """Decode the sampled frames and run the processor, timed: the CPU half of encoding.

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
                with timer.stage("preprocess"), as_input_error(QuestionError):
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
        with timer.stage("preprocess"), as_input_error(QuestionError):
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


def sampling_key(sampling: SamplingOptions, frames_multiple: int,
                 signals: frozenset[str] = frozenset()) -> str:
    """The sampling options (and the vision signals read with the features) as part of a
    feature-cache key."""
    key = (f"frames={sampling.frames if sampling.fps is None else None},fps={sampling.fps},"
           f"max_frames={sampling.max_frames},multiple_of={frames_multiple},"
           f"pixels={sampling.min_pixels},{sampling.max_pixels}")
    return key + (f",signals={','.join(sorted(signals))}" if signals else "")


@contextmanager
def as_input_error(kind: type[Exception]) -> Iterator[None]:
    """``kind`` raised inside becomes an InputError with the same one-line message."""
    try:
        yield
    except kind as error:
        raise InputError(str(error)) from None


def _stage_times(timer: StageTimer) -> dict[str, float]:
    return {stage: timer.stages_ms.get(stage, 0.0)
            for stage in ("feature_cache", "video_decode", "preprocess")}
