"""What a question is asked with: which frames (``SamplingOptions``), how its video is
compressed (``CompressionOptions``) and how the answer is generated (``GenerationOptions``);
and the checks that refuse a bad value, naming the option, before any expensive work.
"""

from __future__ import annotations

from dataclasses import dataclass

from .compression import check_method_options, get_method, method_options
from .compression.checks import check_ratio
from .errors import InputError
from .video import DEFAULT_MAX_FRAMES, DEFAULT_NUM_FRAMES, VideoError, sample_indices


@dataclass(frozen=True)
class SamplingOptions:
    """Which frames to decode: ``frames`` evenly spaced, or ``fps`` per second up to a cap."""

    frames: int = DEFAULT_NUM_FRAMES
    fps: float | None = None
    max_frames: int = DEFAULT_MAX_FRAMES
    # Per-frame pixel bounds of the Qwen families (None: the family's default, see
    # models.sizing); refused for a family that resizes frames to a fixed size.
    min_pixels: int | None = None
    max_pixels: int | None = None


@dataclass(frozen=True)
class CompressionOptions:
    ratio: float = 0.25
    method: str = "vidcom2"
    seed: int = 0
    method_options: tuple[tuple[str, float], ...] = ()  # hyperparameter overrides by name


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


def check_options(compression: CompressionOptions, generation: GenerationOptions,
                  profile: str | None = None) -> None:
    """InputError naming the option, before any expensive work; the method's options are
    checked for the family ``profile`` where it is known before loading."""
    check_compression(compression, profile)
    check_generation(generation)


def check_compression(compression: CompressionOptions, profile: str | None = None) -> None:
    """InputError naming the option. The method's options are checked for the model's family
    ``profile``, or without one (before the model loads) against every profile."""
    try:
        check_ratio(compression.ratio)
    except ValueError as error:
        raise InputError(f"--ratio: {error}") from None
    try:
        get_method(compression.method)
    except ValueError as error:
        raise InputError(f"--method: {error}") from None
    overrides = dict(compression.method_options)
    try:
        if profile is None:
            check_method_options(compression.method, overrides)
        else:
            method_options(compression.method, profile, overrides)
    except ValueError as error:
        raise InputError(f"--method-option: {error}") from None


def check_generation(generation: GenerationOptions) -> None:
    if generation.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens: must be at least 1, got {generation.max_new_tokens}")


def check_sampling(sampling: SamplingOptions) -> None:
    """InputError naming the sampling options, before any video is opened or model loaded."""
    try:
        sample_indices(1, num_frames=sampling.frames if sampling.fps is None else None,
                       fps=sampling.fps, source_fps=1.0, max_frames=sampling.max_frames)
    except VideoError as error:
        raise InputError(f"--frames/--fps/--max-frames: {error}") from None
    for name, value in (("--min-pixels", sampling.min_pixels),
                        ("--max-pixels", sampling.max_pixels)):
        if value is not None and value < 1:
            raise InputError(f"{name}: must be at least 1, got {value}")
    if (sampling.min_pixels is not None and sampling.max_pixels is not None
            and sampling.min_pixels > sampling.max_pixels):
        raise InputError(f"--min-pixels/--max-pixels: min {sampling.min_pixels} is above max "
                         f"{sampling.max_pixels}")
