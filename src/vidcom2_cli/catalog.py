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

# config.model_type -> (family label, recommended checkpoints (smallest first), what the
# family does with the options: every family takes every --method, --ratio, batching, prefix
# reuse and the feature cache). Only checkpoint ids confirmed to exist are listed. The pixel
# bounds in the notes are models/sizing.py's (tests/test_catalog.py checks them).
SUPPORTED_MODEL_TYPES: dict[str, tuple[str, tuple[str, ...], str]] = {
    'llava_onevision': (
        'LLaVA-OneVision / LLaVA-Video',
        ('llava-hf/llava-onevision-qwen2-0.5b-ov-hf', 'llava-hf/llava-onevision-qwen2-7b-ov-hf',
         'llava-hf/LLaVA-Video-7B-Qwen2-hf'),
        '1 frame per unit; the newline after the video kept; dense positions; frames '
        "resized to the vision tower's square (no --min-pixels/--max-pixels)",
    ),
    'qwen2_vl': (
        'Qwen2-VL',
        ('Qwen/Qwen2-VL-2B-Instruct', 'Qwen/Qwen2-VL-7B-Instruct',),
        '2 frames per unit; M-RoPE positions kept; frames sized to 3,136-602,112 '
        'pixels (--min-pixels/--max-pixels)',
    ),
    'qwen2_5_vl': (
        'Qwen2.5-VL',
        ('Qwen/Qwen2.5-VL-3B-Instruct', 'Qwen/Qwen2.5-VL-7B-Instruct',),
        '2 frames per unit; M-RoPE positions (with real frame times) kept; frames '
        'sized to 200,704-1,605,632 pixels (--min-pixels/--max-pixels)',
    ),
    'qwen3_vl': (
        'Qwen3-VL',
        ('Qwen/Qwen3-VL-2B-Instruct', 'Qwen/Qwen3-VL-8B-Instruct',),
        '2 frames per unit; M-RoPE positions kept; a timestamp per unit in the '
        'prompt, kept; deepstack features sliced; frames sized to 200,704-1,605,632 '
        'pixels (--min-pixels/--max-pixels)',
    ),
    'qwen3_vl_moe': (
        'Qwen3-VL-MoE',
        ('Qwen/Qwen3-VL-30B-A3B-Instruct',),
        '2 frames per unit; M-RoPE positions kept; a timestamp per unit in the '
        'prompt, kept; deepstack features sliced; mixture-of-experts language model; '
        'frames sized to 200,704-1,605,632 pixels (--min-pixels/--max-pixels)',
    ),
    'qwen3_5': (
        'Qwen3.5',
        ('Qwen/Qwen3.5-9B', 'Qwen/Qwen3.5-27B',),
        '2 frames per unit; M-RoPE positions kept; a timestamp per unit in the '
        'prompt, kept; hybrid Gated DeltaNet language model: reused questions '
        'answered one generate call per question length; frames sized to '
        '200,704-1,605,632 pixels (--min-pixels/--max-pixels)',
    ),
    'qwen3_5_moe': (
        'Qwen3.5-MoE',
        ('Qwen/Qwen3.5-35B-A3B',),
        '2 frames per unit; M-RoPE positions kept; a timestamp per unit in the '
        'prompt, kept; hybrid Gated DeltaNet mixture-of-experts language model: '
        'reused questions answered one generate call per question length; frames '
        'sized to 200,704-1,605,632 pixels (--min-pixels/--max-pixels)',
    ),
    'llava_next_video': (
        'LLaVA-NeXT-Video',
        ('llava-hf/LLaVA-NeXT-Video-7B-hf',),
        '1 frame per unit (2x2 pooled); dense positions; frames resized to the '
        "vision tower's square (no --min-pixels/--max-pixels)",
    ),
    'internvl': (
        'InternVL',
        ('OpenGVLab/InternVL3-1B-hf',),
        "1 frame per unit, each frame an image ('FrameN: <img>...</img>' kept); "
        "dense positions; frames resized to the vision tower's square (no "
        '--min-pixels/--max-pixels)',
    ),
    'glm4v': (
        'GLM-4.1V',
        ('zai-org/GLM-4.1V-9B-Thinking',),
        "2 frames per unit; 3-D positions from the model's get_rope_index kept; "
        'per-unit image begin/end tokens and timestamps kept; frames sized by the '
        "checkpoint's processor (no --min-pixels/--max-pixels)",
    ),
    'glm46v': (
        'GLM-4.6V',
        ('zai-org/GLM-4.6V-Flash',),
        "2 frames per unit; 3-D positions from the model's get_rope_index kept; "
        'per-unit image begin/end tokens and timestamps kept; frames sized by the '
        "checkpoint's processor (no --min-pixels/--max-pixels)",
    ),
}

# Families whose compression methods take other defaults than the qwen profile's (each
# adapter's compression_profile); the profile decides which --method-option names exist.
PROFILE_OF_MODEL_TYPE = {"llava_onevision": "onevision", "llava_next_video": "llava_video"}

# The registered compression methods (compression/methods.py builds them from their modules),
# so that an unknown --method is refused before torch is imported.
METHOD_NAMES = ("vidcom2", "vidcom2+flat", "fastvid", "fastvid+fca", "holitom", "holitom+fca",
                "visionzip", "visionzip+fca", "dycoke", "dycoke+fca", "flashvid", "flashvid+fca",
                "random", "random+fca", "uniform", "uniform+fca")

DTYPE_NAMES = ("auto", "bfloat16", "bf16", "float16", "fp16", "float32", "fp32")
ATTENTION_CHOICES = ("auto", "flash_attention_2", "sdpa", "eager")

DEFAULT_NUM_FRAMES = 32
DEFAULT_MAX_FRAMES = 64
DEFAULT_RATIO = 0.25
DEFAULT_METHOD = "vidcom2"
DEFAULT_MAX_NEW_TOKENS = 128
# A live stream's sampling and memory, for `watch` and `serve --watch`.
DEFAULT_WATCH_FPS = 1.0
DEFAULT_CHUNK_S = 4.0
DEFAULT_MEMORY_TOKENS = 4096
DEFAULT_FORGET = "compress"
FEATURE_CACHE_VARIABLE = "VIDCOM2_FEATURE_CACHE"  # the default --feature-cache folder


def preset_names() -> list[str]:
    folder = resources.files("vidcom2_cli") / "presets"
    return sorted(entry.name.removesuffix(".json") for entry in folder.iterdir()
                  if entry.name.endswith(".json"))


def preset_source(name: str) -> str:
    """The hub checkpoint whose architecture a random-weight preset reproduces."""
    return _preset(name)["_source"]


def preset_model_type(name: str) -> str:
    return _preset(name)["model_type"]


def _preset(name: str) -> dict:
    text = (resources.files("vidcom2_cli") / "presets" / f"{name}.json").read_text()
    return json.loads(text)
