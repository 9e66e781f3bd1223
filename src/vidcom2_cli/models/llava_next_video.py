"""LLaVA-NeXT-Video (llava-hf/LLaVA-NeXT-Video-*-hf).

Each frame: the CLIP tower (CLS dropped), then 2x2 average pooling (24x24 -> 12x12 on the real
models), then the projector: a plain run of pooled tokens per frame, with no newline or other
structural token in the video, so every placeholder is a compressible token. Positions are 1-D;
as for LLaVA-OneVision and the authors' code, the compressed sequence gets dense positions.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..compression import KeepPlan
from .items import EncodedVideo, PreparedItem
from .llava_onevision import LlavaOnevisionAdapter
from .vision_signals import grid_tokens, square_grids


class LlavaNextVideoAdapter(LlavaOnevisionAdapter):
    @torch.inference_mode()
    def run_encoder(self, item: PreparedItem) -> Any:
        output = self.model.model.get_video_features(
            pixel_values_videos=item.inputs["pixel_values_videos"],
            vision_feature_layer=self.model.config.vision_feature_layer,
            vision_feature_select_strategy=self.model.config.vision_feature_select_strategy,
            return_dict=True)
        # (1, T * N, D)
        return BaseModelOutputWithPooling(pooler_output=output.pooler_output)

    def describe(self, output: Any, inputs: dict[str, torch.Tensor]) -> EncodedVideo:
        tokens = output.pooler_output[0]
        vision = self.model.config.vision_config
        side = vision.image_size // vision.patch_size // self.model.config.spatial_pool_stride
        if tokens.shape[0] % (side * side):
            raise RuntimeError(f"expected {side}x{side} pooled tokens per frame, got "
                               f"{tokens.shape[0]} tokens")
        features = tokens.reshape(-1, side * side, tokens.shape[-1])
        return EncodedVideo(features=features, grid=(side, side), output=output)

    @property
    def compression_profile(self) -> str:
        return "llava_video"

    def pool_signals(self, values: torch.Tensor, inputs: dict[str, torch.Tensor]
                     ) -> torch.Tensor:
        """Averaged over the pooler's stride x stride windows (the pooler itself may average,
        take the maximum or convolve; the signals are averaged in every case)."""
        stride = self.model.config.spatial_pool_stride
        return grid_tokens(torch.nn.functional.avg_pool2d(square_grids(values), stride))

    def feature_keep_mask(self, plan: KeepPlan) -> torch.Tensor:
        return plan.flat_mask()
