"""The tiny offline checkpoints load by path like real ones and answer about a video."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from vidcom2_cli.models.offline import FAMILIES, QWEN3_FAMILIES

pytestmark = pytest.mark.slow

# Frames we decoded ourselves: 8 frames sampled uniformly from a 60 s clip at 24 fps.
VIDEO = np.random.default_rng(0).integers(0, 256, size=(8, 64, 64, 3), dtype=np.uint8)
METADATA = {"fps": 24.0, "total_num_frames": 1440, "frames_indices": list(range(0, 1440, 180))}
MESSAGES = [
    {
        "role": "user",
        "content": [{"type": "video"}, {"type": "text", "text": "What happens in this video?"}],
    }
]
PLACEHOLDER = {
    "llava_onevision": "<video>",
    "llava_next_video": "<video>",
    "internvl": "<video>",
    "glm4v": "<|begin_of_video|><|video|><|end_of_video|>",
    "glm46v": "<|begin_of_video|><|video|><|end_of_video|>",
    "qwen2_vl": "<|vision_start|><|video_pad|><|vision_end|>",
    "qwen2_5_vl": "<|vision_start|><|video_pad|><|vision_end|>",
    **{family: "<|vision_start|><|video_pad|><|vision_end|>" for family in QWEN3_FAMILIES},
}


def expected_video_tokens(family: str, model: torch.nn.Module, inputs: dict) -> int:
    """Video tokens the prompt must hold, from the model's config and the processed video."""
    if family == "llava_onevision":
        vision = model.config.vision_config
        pooled_side = math.ceil(vision.image_size // vision.patch_size / 2)
        frames = inputs["pixel_values_videos"].shape[1]
        return frames * pooled_side**2 + 1  # one image_newline after the whole video
    if family == "internvl":  # each frame an image: its tokens pixel-shuffled by 0.5
        vision = model.config.vision_config
        side = vision.image_size[0] // vision.patch_size[0] // 2
        return inputs["pixel_values"].shape[0] * side**2
    if family == "llava_next_video":  # 2x2 average pooling, nothing after the video
        vision = model.config.vision_config
        pooled_side = vision.image_size // vision.patch_size // 2
        return inputs["pixel_values_videos"].shape[1] * pooled_side**2
    merge = model.config.vision_config.spatial_merge_size
    return int(inputs["video_grid_thw"].prod()) // merge**2


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_is_safetensors(tiny_checkpoints, family: str) -> None:
    directory = tiny_checkpoints(family)
    assert list(directory.glob("*.safetensors"))
    assert not list(directory.glob("*.bin"))


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_by_path_and_generates(tiny_checkpoints, family: str) -> None:
    directory = tiny_checkpoints(family)
    processor = AutoProcessor.from_pretrained(directory)
    model = AutoModelForImageTextToText.from_pretrained(directory, attn_implementation="sdpa")
    model.eval()

    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert PLACEHOLDER[family] in prompt
    endings = {"llava_next_video": "ASSISTANT:", "glm4v": "<|assistant|>\n",
               "glm46v": "<|assistant|>\n", "qwen3_5": "<|im_start|>assistant\n<think>\n",
               "qwen3_5_moe": "<|im_start|>assistant\n<think>\n"}  # Qwen3.5 thinks by default
    assert prompt.endswith(endings.get(family, "<|im_start|>assistant\n"))
    inputs = processor(
        text=[prompt],
        videos=[VIDEO],
        video_metadata=[METADATA],
        do_sample_frames=False,
        return_tensors="pt",
    )

    # All 8 frames are used: 8 frames, or 4 temporal units of 2 frames.
    if family == "internvl":  # the frames, as images
        assert inputs["pixel_values"].shape[0] == 8
        assert "Frame8: <img>" in processor.decode(inputs["input_ids"][0])
    elif family.startswith("llava"):
        assert inputs["pixel_values_videos"].shape[:2] == (1, 8)
    else:
        assert inputs["video_grid_thw"].tolist() == [[4, 8, 8]]
    # The metadata reached the processor: real frame spacing, not the 24 fps fallback.
    if family == "qwen2_5_vl":
        assert inputs["second_per_grid_ts"].tolist() == [pytest.approx(15.0)]
    if family in QWEN3_FAMILIES:  # one timestamp per temporal unit
        assert "<3.8 seconds>" in processor.decode(inputs["input_ids"][0])
    if family == "glm4v":  # likewise, in whole seconds
        assert "<|end_of_image|>45<|end_of_video|>" in processor.decode(inputs["input_ids"][0])
    if family == "glm46v":  # likewise, after each unit's image tokens
        prompt_ids = inputs["input_ids"][0]
        assert "<|end_of_image|>45.0 seconds<|end_of_video|>" in processor.decode(prompt_ids)

    # InternVL and GLM fill a video's frames with their image token
    placeholder = (model.config.image_token_id if family in ("internvl", "glm4v", "glm46v")
                   else model.config.video_token_id)
    placeholders = int((inputs["input_ids"] == placeholder).sum())
    with torch.no_grad():
        if family == "internvl":
            features = model.get_image_features(inputs["pixel_values"]).pooler_output
        elif family.startswith("llava"):
            features = model.get_video_features(inputs["pixel_values_videos"]).pooler_output
        else:
            features = model.get_video_features(
                inputs["pixel_values_videos"], inputs["video_grid_thw"]
            ).pooler_output
            features = torch.cat(features)
        output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert placeholders == expected_video_tokens(family, model, inputs)
    assert features.reshape(-1, features.shape[-1]).shape[0] == placeholders

    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    assert 1 <= len(new_tokens) <= 3
    assert isinstance(processor.decode(new_tokens, skip_special_tokens=True), str)
