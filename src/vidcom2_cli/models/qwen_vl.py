"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL.

Video features come after the PatchMerger, ordered by temporal unit (2 frames), then row, then
column of the merged grid. M-RoPE positions are computed by the model's own ``get_rope_index``
on the FULL sequence and then sliced, so kept video tokens keep their (t, h, w) positions, text
after the video keeps its positions, and decoding continues from the uncompressed rope delta.
Qwen3-VL's deepstack features are sliced with the same mask as the main features.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..compression import KeepPlan
from .base import VideoAdapter
from .items import EncodedVideo, PreparedItem
from .sizing import DEFAULT_PIXEL_BOUNDS, PixelBounds, within_aspect
from .vision_signals import SignalLayer


@dataclass
class VideoEncoderOutput(BaseModelOutputWithPooling):
    """What the language model reads of the vision encoder's output (one tensor per video in
    ``pooler_output``; Qwen3-VL adds per-layer ``deepstack_features``), whether it comes from
    the encoder, a compression plan or a feature cache."""

    deepstack_features: list[tuple[torch.Tensor, ...]] | None = None


class QwenVLAdapter(VideoAdapter):
    def preprocess(self, frames: np.ndarray, metadata: dict[str, Any], question: str,
                   bounds: PixelBounds | None = None) -> PreparedItem:
        """The shared preprocessing, on frames letterboxed to the 200:1 the processor takes
        (``sizing.within_aspect``)."""
        return super().preprocess(within_aspect(frames), metadata, question, bounds)

    @property
    def frames_multiple(self) -> int:
        return int(self.model.config.vision_config.temporal_patch_size)

    @property
    def default_pixel_bounds(self) -> PixelBounds | None:
        return DEFAULT_PIXEL_BOUNDS.get(self.model.config.model_type)

    def sizing_options(self, frames: int, bounds: PixelBounds | None) -> dict[str, Any]:
        """Every frame scaled into ``bounds`` (per frame, as qwen-vl-utils does).

        Qwen2-VL's video processor reads its size limits per frame; with
        ``cap_pixels_per_frame`` it also shares a whole-video budget (qwen-vl-utils'
        VIDEO_TOTAL_PIXELS) between the frames, which binds only past 112 frames at
        Qwen2.5-VL's bounds (300 at Qwen2-VL's). Qwen3-VL's reads them for the whole clip
        (frames x height x width), so they are given times the frame count (a multiple of the
        temporal patch, so the processor's test equals the per-frame one) and its own
        per-frame token cap is left off.
        """
        if bounds is None:
            return {}
        # Imported here, not with the module: the video processor's module pulls in torchvision
        # (and with it torch._dynamo), which the loaded processor has imported by now anyway.
        from transformers import Qwen3VLVideoProcessor

        options: dict[str, Any] = {}
        per_clip = isinstance(self.processor.video_processor, Qwen3VLVideoProcessor)
        scale = frames if per_clip else 1
        options["size"] = {"shortest_edge": bounds.min_pixels * scale,
                           "longest_edge": bounds.max_pixels * scale}
        if hasattr(self.processor.video_processor, "cap_pixels_per_frame"):
            # (absent from transformers releases before the option)
            options["cap_pixels_per_frame"] = not per_clip
        return options

    @torch.inference_mode()
    def run_encoder(self, item: PreparedItem) -> Any:
        output = self.model.model.get_video_features(
            pixel_values_videos=item.inputs["pixel_values_videos"],
            video_grid_thw=item.inputs["video_grid_thw"], return_dict=True)
        deepstack = getattr(output, "deepstack_features", None)
        return VideoEncoderOutput(pooler_output=output.pooler_output,
                                  deepstack_features=deepstack)

    def describe(self, output: Any, inputs: dict[str, torch.Tensor]) -> EncodedVideo:
        merge = int(self.model.config.vision_config.spatial_merge_size)
        units, height, width = (int(v) for v in inputs["video_grid_thw"][0])
        grid = (height // merge, width // merge)
        tokens = output.pooler_output[0]
        features = tokens.reshape(units, grid[0] * grid[1], tokens.shape[-1])
        return EncodedVideo(features=features, grid=grid, output=output)

    def output_tensors(self, output: Any) -> dict[str, torch.Tensor]:
        tensors = {"pooler_output": output.pooler_output[0]}
        for layer, features in enumerate(output.deepstack_features or []):
            tensors[f"deepstack.{layer}"] = features[0]
        return tensors

    def output_from_tensors(self, tensors: dict[str, torch.Tensor]) -> Any:
        layers = sorted((key for key in tensors if key.startswith("deepstack.")),
                        key=lambda key: int(key.split(".")[1]))
        return VideoEncoderOutput(
            pooler_output=(tensors["pooler_output"],),
            deepstack_features=[(tensors[key],) for key in layers] or None)

    def signal_layer(self) -> SignalLayer:
        """The last block that attends over whole temporal units (Qwen2.5-VL's other blocks
        attend within windows); its merge units are runs of merge_size**2 patches."""
        visual = self.model.model.visual
        full_attention = getattr(visual, "fullatt_block_indexes", None)
        unit = int(self.model.config.vision_config.spatial_merge_size) ** 2
        return SignalLayer(visual.blocks[full_attention[-1] if full_attention else -1].attn,
                           merge_unit=unit)

    def pool_signals(self, values: torch.Tensor, inputs: dict[str, torch.Tensor]
                     ) -> torch.Tensor:
        """Averaged over each merge unit (merge_size**2 consecutive patches), then put back
        in raster order where the tower ran merge units in window order (Qwen2.5-VL)."""
        visual = self.model.model.visual
        unit = int(self.model.config.vision_config.spatial_merge_size) ** 2
        chunks, patches, channels = values.shape
        merged = values.reshape(chunks, patches // unit, unit, channels).mean(dim=2)
        if getattr(visual, "fullatt_block_indexes", None) is None:
            return merged
        from transformers.vision_utils import get_vision_window_index

        window_index, _ = get_vision_window_index(
            inputs["video_grid_thw"], spatial_merge_size=visual.spatial_merge_size,
            window_size=visual.window_size, patch_size=visual.patch_size)
        tokens = patches // unit
        local = window_index.to(merged.device).reshape(chunks, tokens) \
            - torch.arange(chunks, device=merged.device)[:, None] * tokens
        return torch.empty_like(merged).scatter_(
            1, local[..., None].expand(-1, -1, channels), merged)

    def feature_keep_mask(self, plan: KeepPlan) -> torch.Tensor:
        return plan.flat_mask()

    def map_output(self, output: Any, transform: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        deepstack = output.deepstack_features
        return VideoEncoderOutput(
            pooler_output=(transform(output.pooler_output[0]),),
            deepstack_features=None if deepstack is None else [(transform(layer[0]),)
                                                               for layer in deepstack])

    def merge_outputs(self, outputs: list[Any]) -> Any:
        deepstack = outputs[0].deepstack_features
        return VideoEncoderOutput(
            pooler_output=tuple(o.pooler_output[0] for o in outputs),
            deepstack_features=None if deepstack is None else [
                tuple(o.deepstack_features[layer][0] for o in outputs)
                for layer in range(len(deepstack))])

    def full_positions(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        # get_rope_index reads only its arguments and the config, so it runs on the CPU inputs.
        rope_index = self.model.model.get_rope_index
        accepted = inspect.signature(rope_index).parameters
        positions, _ = rope_index(**{key: value for key, value in inputs.items()
                                     if key in accepted})
        return positions[:, 0]  # (3, L)

    def kept_positions(self, full: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        return full.index_select(1, kept)

    def batch_positions(self, positions: torch.Tensor, attention_mask: torch.Tensor
                        ) -> torch.Tensor:
        # generate() itself passes (4, B, L): 1-D text positions (used for the attention mask)
        # on top of the three M-RoPE rows. Build the same so R = 1 matches it exactly.
        text = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        return torch.cat([text[None], positions], dim=0)
