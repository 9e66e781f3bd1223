"""Model adapters: run each supported video-LLM family with a KeepPlan applied from outside."""

from ..catalog import DEFAULT_MODEL, SUPPORTED_MODEL_TYPES
from .base import VideoAdapter
from .items import CompressedItem, EncodedVideo, GenerationResult, PreparedItem
from .loading import (
    LoadedModel,
    LoadOptions,
    ModelLoadError,
    load_model,
)
from .registry import adapter_for, load_adapter

__all__ = ["DEFAULT_MODEL", "SUPPORTED_MODEL_TYPES", "CompressedItem", "EncodedVideo",
           "GenerationResult", "LoadOptions", "LoadedModel", "ModelLoadError", "PreparedItem",
           "VideoAdapter", "adapter_for", "load_adapter", "load_model"]
