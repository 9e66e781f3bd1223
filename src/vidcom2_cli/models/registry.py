"""model_type -> adapter class, and loading a ready adapter from a model reference."""

from __future__ import annotations

from .base import VideoAdapter
from .glm4v import Glm4vAdapter
from .internvl import InternVLAdapter
from .llava_next_video import LlavaNextVideoAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .loading import LoadedModel, LoadOptions, load_model
from .presets import build_random_model, is_random_reference
from .qwen3_5 import Qwen3_5Adapter
from .qwen_vl import QwenVLAdapter

ADAPTERS: dict[str, type[VideoAdapter]] = {
    "llava_onevision": LlavaOnevisionAdapter,
    "qwen2_vl": QwenVLAdapter,
    "qwen2_5_vl": QwenVLAdapter,
    "qwen3_vl": QwenVLAdapter,
    "qwen3_vl_moe": QwenVLAdapter,
    "qwen3_5": Qwen3_5Adapter,
    "qwen3_5_moe": Qwen3_5Adapter,
    "llava_next_video": LlavaNextVideoAdapter,
    "internvl": InternVLAdapter,
    "glm4v": Glm4vAdapter,
    "glm46v": Glm4vAdapter,
}


def adapter_for(loaded: LoadedModel) -> VideoAdapter:
    return ADAPTERS[loaded.model_type](loaded.model, loaded.processor, loaded.device)


def load_adapter(reference: str, options: LoadOptions = LoadOptions()
                 ) -> tuple[LoadedModel, VideoAdapter]:
    """A hub id, a local checkpoint directory, or ``random:NAME`` (a random-weight preset)."""
    load = build_random_model if is_random_reference(reference) else load_model
    loaded = load(reference, options)
    return loaded, adapter_for(loaded)
