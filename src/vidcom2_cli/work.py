"""What the engine is handed and hands back: a request in the forms it takes through the
pipeline (``Request`` -> ``PreparedRequest`` -> ``EncodedRequest`` -> ``VideoContext``), the
unit of whole work (``QuestionGroup``: questions about one encoded video) and the ``Answer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .compression import KeepPlan
from .feature_cache import CachedEncoding
from .models.items import CompressedItem, EncodedVideo, PrefixCache, PreparedItem
from .models.loop_state import LLMTokens
from .options import CompressionOptions
from .timing import PeakMemory
from .video import SampledVideo


@dataclass(frozen=True)
class Request:
    video: str
    question: str
    id: str | None = None


@dataclass
class PreparedRequest:
    """A request after decoding and preprocessing, on the CPU: ready for the vision encoder.

    ``stages_ms`` has ``video_decode``, ``preprocess`` and ``feature_cache``, timed where
    ``Engine.prepare`` ran (a worker thread in batch mode), without waiting for the device.
    With a feature-cache hit, ``cached`` holds the encoder output, the item has no pixels and
    the video no frames: neither decoding nor the vision encoder runs.
    """

    request: Request
    video: SampledVideo
    item: PreparedItem  # CPU tensors
    stages_ms: dict[str, float] = field(default_factory=dict)
    cached: CachedEncoding | None = None
    key: str | None = None  # the feature-cache key, when a cache is in use

    @property
    def feature_cache(self) -> str | None:
        """"hit" or "miss" with a feature cache, None without one."""
        if self.key is None:
            return None
        return "hit" if self.cached is not None else "miss"


@dataclass
class EncodedRequest:
    """A request after decoding, preprocessing and the vision encoder: ready to compress.

    ``item`` is on the device; ``host_item`` is the same without pixels on the CPU, where the
    prompt of another question about the video is built.
    """

    request: Request
    video: SampledVideo
    item: PreparedItem
    encoded: EncodedVideo
    stages_ms: dict[str, float] = field(default_factory=dict)
    host_item: PreparedItem | None = None
    feature_cache: str | None = None


@dataclass
class VideoContext:
    """One video decoded, encoded and compressed once (one ratio and method), asked any
    number of questions.

    VidCom2's plan never looks at the question, and the chat template puts the video before
    it, so the prompt up to the video's end (``prefix``) is the same for every question: it is
    prefilled once into a ``PrefixCache`` and each question prefills only its own tokens.
    """

    encoded: EncodedRequest
    plan: KeepPlan
    compress_ms: float
    prefix: CompressedItem  # the kept tokens before the question
    reported: bool = False  # whether an answer has carried the shared stages' times yet


@dataclass(frozen=True)
class TokenCounts:
    visual_full: int  # video placeholder tokens before compression (structural ones included)
    visual_kept: int
    per_frame_kept: list[int]  # one entry per temporal unit
    visual_structural: int  # placeholders that belong to no unit (LLaVA's newline)
    prompt_full: int
    prompt_kept: int
    generated: int
    prefix_reused: int = 0  # prompt tokens served from a cached prefix, not prefilled again
    # prompt tokens of the video's prefix when it was prefilled apart, once for several
    # questions (the first question's answer carries that prefill: timing_ms.prefix_prefill)
    prefix_tokens: int = 0
    # with in-LLM stages: visual tokens after each stage and the decoding KV sizes
    llm: LLMTokens | None = None


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
    feature_cache: str | None = None  # "hit", "miss", or None without a feature cache
    run: dict[str, object] = field(default_factory=dict)  # Engine.run_info(): what answered


@dataclass(frozen=True)
class Question:
    """One question to answer about an encoded video, and the compression it is asked under."""

    request: Request
    compression: CompressionOptions


@dataclass(frozen=True)
class QuestionGroup:
    """Questions about one encoded video: the unit of work ``Engine.answer_groups`` takes (a
    group of a batch; a request or a chat turn alike)."""

    video: EncodedRequest
    questions: tuple[Question, ...]


@dataclass(frozen=True)
class VideoQuestions:
    """Questions about one video, not decoded yet: the unit of work ``Engine.answer_stream``
    takes. The video is prepared with the first question's request; ``error`` is why none of
    the questions can run (each gets it as its outcome)."""

    questions: tuple[Question, ...]
    error: str | None = None


@dataclass
class OpenVideos:
    """Videos compressed and their prompt prefixes prefilled together (``prefix`` has a row
    per context), ready for any number of questions (``Engine.ask_open``)."""

    contexts: list[VideoContext]
    prefix: PrefixCache
