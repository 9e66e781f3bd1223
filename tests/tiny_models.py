"""Tiny random-weight checkpoints of every supported family, built offline for the tests.

A checkpoint is saved with `save_pretrained` (safetensors) and loads by path exactly like a
user's real checkpoint. Sizes: a 2-layer (24 for the LLaVA families), 64-wide text model and a
2-layer, 32-wide vision tower with 8-pixel patches, so an 8-frame 64x64 clip gives 16 visual
tokens per frame (LLaVA-OneVision) or per temporal unit of 2 frames (Qwen).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForImageTextToText,
    Glm4vConfig,
    Glm46VConfig,
    InternVLConfig,
    LlavaNextVideoConfig,
    LlavaOnevisionConfig,
    PretrainedConfig,
    Qwen2_5_VLConfig,
    Qwen2VLConfig,
    Qwen3_5Config,
    Qwen3_5MoeConfig,
    Qwen3VLConfig,
    Qwen3VLMoeConfig,
)

from vidcom2_cli.models.offline import (
    EOS_TOKEN,
    PAD_TOKEN,
    build_processor,
    build_tokenizer,
)
from vidcom2_cli.models.sizing import PixelBounds

_QWEN_PATCHING = {"patch_size": 8, "merge_size": 2, "temporal_patch_size": 2}
TINY_VISION_SIZES: dict[str, dict[str, int]] = {
    # 56 / 8 = 7x7 patches, pooled to ceil(7 / 2) = 4x4 per frame: odd like the real 27x27.
    "llava_onevision": {"image_size": 56, "patch_size": 8},
    # 64 / 8 = 8x8 patches, average-pooled by 2 to 4x4 per frame (the real 24x24 -> 12x12).
    "llava_next_video": {"image_size": 64, "patch_size": 8},
    # 64 / 8 = 8x8 patches, pixel-shuffled by 0.5 to 4x4 per frame (the real 32x32 -> 16x16).
    "internvl": {"image_size": 64, "patch_size": 8},
    # Whole-clip limits: up to 16 frames of 64x64 keep their size (4x4 tokens per unit).
    **{family: {**_QWEN_PATCHING, "min_pixels": 4 * 32 * 32, "max_pixels": 16 * 64 * 64}
       for family in ("glm4v", "glm46v")},
    # Per-frame limits: a 64x64 frame keeps its size, 8x8 patches, merged to 4x4 tokens.
    "qwen2_vl": {**_QWEN_PATCHING, "min_pixels": 32 * 32, "max_pixels": 64 * 64},
    "qwen2_5_vl": {**_QWEN_PATCHING, "min_pixels": 32 * 32, "max_pixels": 64 * 64},
    # Whole-clip limits: up to 16 frames of 64x64 keep their size.
    **{family: {**_QWEN_PATCHING, "min_pixels": 4 * 32 * 32, "max_pixels": 16 * 64 * 64}
       for family in ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")},
}

# Per-frame pixel bounds of the tiny Qwen checkpoints, in place of the families' real defaults
# (hundreds of tokens per frame, see vidcom2_cli.models.sizing) for the tests in this process:
# a 64x64 frame keeps its size (16 tokens per temporal unit), larger ones shrink to 64x64's area.
TINY_PIXEL_BOUNDS = PixelBounds(min_pixels=32 * 32, max_pixels=64 * 64)

_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}
# The LLaVA families run the field's in-LLM stages by default at their published layers
# (HoliTom's merge at layer 18, DyCoke's KV pruning from layer 3): their language models get the
# 24 layers of the real LLaVA-OneVision-0.5B's Qwen2-0.5B, still 64 wide.
LLAVA_TEXT_LAYERS = 24
# head_dim 16 -> 8 rotary frequencies, split between the temporal, height and width positions.
_QWEN2_ROPE = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}
_QWEN3_ROPE = {
    "rope_type": "default",
    "rope_theta": 5e6,
    "mrope_section": [4, 2, 2],
    "mrope_interleaved": True,
}


def tiny_config(family: str, token_ids: dict[str, int], vocab_size: int) -> PretrainedConfig:
    """A tiny config for `family`; `token_ids` maps special token strings to the tokenizer's ids."""
    sizes = TINY_VISION_SIZES[family]
    text: dict[str, Any] = {**_TEXT, "vocab_size": vocab_size}
    if family == "llava_onevision":
        side = sizes["image_size"]
        return LlavaOnevisionConfig(
            text_config={
                **text,
                "model_type": "qwen2",
                "num_hidden_layers": LLAVA_TEXT_LAYERS,
                "bos_token_id": token_ids[PAD_TOKEN],
                "eos_token_id": token_ids[EOS_TOKEN],
                "pad_token_id": token_ids[PAD_TOKEN],
            },
            vision_config={
                "model_type": "siglip_vision_model",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": side,
                "patch_size": sizes["patch_size"],
                "vision_use_head": False,
            },
            image_token_index=token_ids["<image>"],
            video_token_index=token_ids["<video>"],
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            image_grid_pinpoints=[[side * i, side * j] for i in range(1, 7) for j in range(1, 7)],
        )

    if family in ("glm4v", "glm46v"):
        return (Glm4vConfig if family == "glm4v" else Glm46VConfig)(
            text_config={
                **text,
                "model_type": "glm4v_text",
                # half of each 16-wide head rotates: 4 frequencies for (t, h, w)
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                    "mrope_section": [2, 1, 1], "partial_rotary_factor": 0.5},
                "pad_token_id": token_ids[PAD_TOKEN],
                "eos_token_id": token_ids[EOS_TOKEN],
            },
            vision_config={
                "model_type": "glm4v_vision",
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "image_size": 64,
                "patch_size": sizes["patch_size"],
                "spatial_merge_size": sizes["merge_size"],
                "temporal_patch_size": sizes["temporal_patch_size"],
                "out_hidden_size": _TEXT["hidden_size"],
            },
            image_token_id=token_ids["<|image|>"],
            video_token_id=token_ids["<|video|>"],
            image_start_token_id=token_ids["<|begin_of_image|>"],
            image_end_token_id=token_ids["<|end_of_image|>"],
            video_start_token_id=token_ids["<|begin_of_video|>"],
            video_end_token_id=token_ids["<|end_of_video|>"],
        )

    if family == "internvl":
        side = sizes["image_size"]
        return InternVLConfig(
            text_config={
                **text,
                "model_type": "qwen2",
                "bos_token_id": token_ids[PAD_TOKEN],
                "eos_token_id": token_ids[EOS_TOKEN],
                "pad_token_id": token_ids[PAD_TOKEN],
            },
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": [side, side],
                "patch_size": [sizes["patch_size"], sizes["patch_size"]],
            },
            image_token_id=token_ids["<IMG_CONTEXT>"],
            image_seq_length=(side // sizes["patch_size"]) ** 2 // 4,
            downsample_ratio=0.5,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
            # untied: with a tied head this tiny random model answers one token whatever it
            # sees, which would let answer comparisons pass vacuously
            tie_word_embeddings=False,
        )

    if family == "llava_next_video":
        side = sizes["image_size"]
        return LlavaNextVideoConfig(
            text_config={
                **text,
                "model_type": "llama",
                "num_hidden_layers": LLAVA_TEXT_LAYERS,
                "bos_token_id": token_ids[PAD_TOKEN],
                "eos_token_id": token_ids[EOS_TOKEN],
                "pad_token_id": token_ids[PAD_TOKEN],
            },
            vision_config={
                "model_type": "clip_vision_model",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": side,
                "patch_size": sizes["patch_size"],
                "projection_dim": 32,
            },
            image_token_index=token_ids["<image>"],
            video_token_index=token_ids["<video>"],
            image_grid_pinpoints=[[side * i, side * j] for i in (1, 2) for j in (1, 2)],
        )

    vision: dict[str, Any] = {
        "depth": 2,
        "num_heads": 2,
        "patch_size": sizes["patch_size"],
        "spatial_merge_size": sizes["merge_size"],
        "temporal_patch_size": sizes["temporal_patch_size"],
    }
    qwen_ids = {
        "image_token_id": token_ids["<|image_pad|>"],
        "video_token_id": token_ids["<|video_pad|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"],
        "vision_end_token_id": token_ids["<|vision_end|>"],
    }
    qwen3_vision = {
        **vision,
        "hidden_size": 32,
        "intermediate_size": 64,
        "out_hidden_size": _TEXT["hidden_size"],
        "num_position_embeddings": 64,  # an 8x8 learned grid, resampled per video
    }
    if family in ("qwen3_vl", "qwen3_vl_moe"):
        qwen3_text = {**text, "head_dim": 16, "rope_parameters": _QWEN3_ROPE,
                      "pad_token_id": token_ids[PAD_TOKEN]}
        config_class = Qwen3VLConfig
        if family == "qwen3_vl_moe":  # every layer sparse: 4 experts, 2 per token
            qwen3_text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                              decoder_sparse_step=1)
            config_class = Qwen3VLMoeConfig
        return config_class(
            text_config=qwen3_text,
            vision_config={**qwen3_vision, "deepstack_visual_indexes": [0, 1]},
            **qwen_ids,
        )
    if family in ("qwen3_5", "qwen3_5_moe"):
        # One Gated DeltaNet (linear attention, recurrent state) layer, then one full-attention
        # layer; a quarter of each 32-wide attention head rotates (8 dims: 4 M-RoPE
        # frequencies), as in the real 0.25 partial rotary factor.
        hybrid = {
            **text,
            "head_dim": 32,
            "layer_types": ["linear_attention", "full_attention"],
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 16,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e7,
                                "mrope_section": [2, 1, 1], "mrope_interleaved": True,
                                "partial_rotary_factor": 0.25},
            "pad_token_id": token_ids[PAD_TOKEN],
            "eos_token_id": token_ids[EOS_TOKEN],
        }
        config_class = Qwen3_5Config
        if family == "qwen3_5_moe":
            hybrid.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                          shared_expert_intermediate_size=32)
            config_class = Qwen3_5MoeConfig
        return config_class(text_config=hybrid, vision_config=qwen3_vision, **qwen_ids)
    text_ids = {
        "bos_token_id": token_ids[PAD_TOKEN],
        "eos_token_id": token_ids[EOS_TOKEN],
        "pad_token_id": token_ids[PAD_TOKEN],
    }
    text = {**text, **text_ids, "rope_parameters": _QWEN2_ROPE}
    if family == "qwen2_vl":
        vision = {**vision, "embed_dim": 32, "mlp_ratio": 2, "hidden_size": _TEXT["hidden_size"]}
        return Qwen2VLConfig(text_config=text, vision_config=vision, **qwen_ids)
    vision = {
        **vision,
        "hidden_size": 32,
        "intermediate_size": 64,
        "out_hidden_size": _TEXT["hidden_size"],
        "window_size": 32,  # 32 px = 2x2 merged tokens per attention window
        "fullatt_block_indexes": [1],
        "tokens_per_second": 2,
    }
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **qwen_ids)


def make_tiny_checkpoint(family: str, directory: Path) -> Path:
    """Save a tiny random-weight model of `family` with its processor into `directory`."""
    tokenizer = build_tokenizer(family)
    processor = build_processor(family, tokenizer, **TINY_VISION_SIZES[family])
    token_ids = {
        token: tokenizer.convert_tokens_to_ids(token) for token in tokenizer.all_special_tokens
    }
    config = tiny_config(family, token_ids, vocab_size=len(tokenizer))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = [token_ids[EOS_TOKEN], token_ids[PAD_TOKEN]]
    model.generation_config.pad_token_id = token_ids[PAD_TOKEN]
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
