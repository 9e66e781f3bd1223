"""model_type -> adapter class, and loading a ready adapter from a model reference."""

from __future__ import annotations

from .base import VideoAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .loading import LoadedModel, LoadOptions, load_model
from .qwen_vl import QwenVLAdapter

ADAPTERS: dict[str, type[VideoAdapter]] = {
    "llava_onevision": LlavaOnevisionAdapter,
    "qwen2_vl": QwenVLAdapter,
    "qwen2_5_vl": QwenVLAdapter,
    "qwen3_vl": QwenVLAdapter,
}


def adapter_for(loaded: LoadedModel) -> VideoAdapter:
    return ADAPTERS[loaded.model_type](loaded.model, loaded.processor, loaded.device)


def load_adapter(reference: str, options: LoadOptions = LoadOptions()
                 ) -> tuple[LoadedModel, VideoAdapter]:
    loaded = load_model(reference, options)
    return loaded, adapter_for(loaded)
