"""The light catalogue the command line starts from agrees with the modules that own the
values (which import torch)."""

from __future__ import annotations

from vidcom2_cli import catalog, video
from vidcom2_cli.compression import METHODS
from vidcom2_cli.models import DEFAULT_MODEL, SUPPORTED_MODEL_TYPES, presets
from vidcom2_cli.models.registry import ADAPTERS
from vidcom2_cli.models.sizing import PUBLISHED_PIXEL_BOUNDS
from vidcom2_cli.options import CompressionOptions, GenerationOptions, SamplingOptions


def test_catalog_matches_its_owners() -> None:
    assert catalog.DEFAULT_MODEL == DEFAULT_MODEL
    assert catalog.SUPPORTED_MODEL_TYPES == SUPPORTED_MODEL_TYPES
    assert catalog.preset_names() == presets.preset_names()
    for name in catalog.preset_names():
        assert catalog.preset_source(name) == presets.preset_source(name)
    assert CompressionOptions.ratio == catalog.DEFAULT_RATIO
    assert CompressionOptions.method == catalog.DEFAULT_METHOD and catalog.DEFAULT_METHOD in METHODS
    assert GenerationOptions.max_new_tokens == catalog.DEFAULT_MAX_NEW_TOKENS
    assert catalog.DEFAULT_NUM_FRAMES == SamplingOptions.frames == video.DEFAULT_NUM_FRAMES
    assert catalog.DEFAULT_MAX_FRAMES == SamplingOptions.max_frames == video.DEFAULT_MAX_FRAMES
    assert list(catalog.METHOD_NAMES) == list(METHODS)
    for name in catalog.preset_names():
        assert catalog.preset_model_type(name) == presets.checkpoint_model_type(f"random:{name}")


def test_the_light_family_profiles_are_the_adapters() -> None:
    for model_type, adapter in ADAPTERS.items():
        profile = catalog.PROFILE_OF_MODEL_TYPE.get(model_type, "qwen")
        assert adapter.compression_profile.fget(None) == profile, model_type


def test_family_notes_give_the_pixel_bounds_the_adapters_use() -> None:
    assert set(SUPPORTED_MODEL_TYPES) == set(ADAPTERS)
    for model_type, bounds in PUBLISHED_PIXEL_BOUNDS.items():
        notes = SUPPORTED_MODEL_TYPES[model_type][2]
        assert f"{bounds.min_pixels:,}-{bounds.max_pixels:,} pixels" in notes
