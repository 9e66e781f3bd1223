"""Names and defaults the command line shows before any model code is imported.

``vidcom2 --help``, ``models``, ``info`` and option errors must answer without importing
torch or transformers (seconds); the modules that own these values import both. The values
are repeated here, and tests/test_catalog.py checks that they agree with their owners.
"""

from __future__ import annotations

import json
from importlib import resources

DEFAULT_MODEL = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
RANDOM_PREFIX = "random:"

# config.model_type -> (family label, recommended checkpoints, smallest first)
SUPPORTED_MODEL_TYPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "llava_onevision": ("LLaVA-OneVision / LLaVA-Video", (
        "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        "llava-hf/llava-onevision-qwen2-7b-ov-hf",
        "llava-hf/LLaVA-Video-7B-Qwen2-hf",
    )),
    "qwen2_vl": ("Qwen2-VL", ("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-7B-Instruct")),
    "qwen2_5_vl": ("Qwen2.5-VL", ("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct")),
    "qwen3_vl": ("Qwen3-VL", ("Qwen/Qwen3-VL-2B-Instruct", "Qwen/Qwen3-VL-8B-Instruct")),
}

DEFAULT_NUM_FRAMES = 32
DEFAULT_MAX_FRAMES = 64
DEFAULT_RATIO = 0.25
DEFAULT_METHOD = "vidcom2"
DEFAULT_MAX_NEW_TOKENS = 128
FEATURE_CACHE_VARIABLE = "VIDCOM2_FEATURE_CACHE"  # the default --feature-cache folder


def preset_names() -> list[str]:
    folder = resources.files("vidcom2_cli") / "presets"
    return sorted(entry.name.removesuffix(".json") for entry in folder.iterdir()
                  if entry.name.endswith(".json"))


def preset_source(name: str) -> str:
    """The hub checkpoint whose architecture a random-weight preset reproduces."""
    text = (resources.files("vidcom2_cli") / "presets" / f"{name}.json").read_text()
    return json.loads(text)["_source"]
