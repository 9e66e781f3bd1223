"""LLaVA-OneVision (and LLaVA-Video checkpoints converted to its class).

Video features: vision tower -> projector -> bilinear pooling to ceil(h/2) x ceil(w/2) per
frame, then ONE ``image_newline`` after the whole video, which is always kept. As in the
authors' released code, the compressed sequence gets dense positions 0..L'-1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..compression import KeepPlan
from .base import DensePositionsAdapter
from .items import EncodedVideo, PreparedItem
from .vision_signals import SignalLayer, feature_layer, grid_tokens, square_grids


class LlavaOnevisionAdapter(DensePositionsAdapter):
    @torch.inference_mode()
    def run_encoder(self, item: PreparedItem) -> Any:
        output = self.model.model.get_video_features(
            pixel_values_videos=item.inputs["pixel_values_videos"], return_dict=True)
        # (1, T * N + 1, D): the last token is the newline
        return BaseModelOutputWithPooling(pooler_output=output.pooler_output[0][None])

    def describe(self, output: Any, inputs: dict[str, torch.Tensor]) -> EncodedVideo:
        tokens = output.pooler_output[0]
        vision = self.model.config.vision_config
        side = math.ceil(vision.image_size // vision.patch_size / 2)
        if (tokens.shape[0] - 1) % (side * side):
            raise RuntimeError(f"expected {side}x{side} pooled tokens per frame and a newline, "
                               f"got {tokens.shape[0]} tokens")
        features = tokens[:-1].reshape(-1, side * side, tokens.shape[-1])
        return EncodedVideo(features=features, grid=(side, side), output=output)

    def feature_keep_mask(self, plan: KeepPlan) -> torch.Tensor:
        newline = torch.ones(1, dtype=torch.bool, device=plan.mask.device)
        return torch.cat([plan.flat_mask(), newline])

    def signal_layer(self) -> SignalLayer:
        config = self.model.config
        return feature_layer(self.model.model.vision_tower, config.vision_feature_layer,
                             config.vision_feature_select_strategy)

    @property
    def compression_profile(self) -> str:
        return "onevision"

    def pool_signals(self, values: torch.Tensor, inputs: dict[str, torch.Tensor]
                     ) -> torch.Tensor:
        """Bilinear to ceil(side / 2), as the model's own ``apply_pooling``."""
        images = square_grids(values)
        size = [math.ceil(side / 2) for side in images.shape[2:]]
        return grid_tokens(torch.nn.functional.interpolate(images, size=size, mode="bilinear"))

    def map_output(self, output: Any, transform: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        return BaseModelOutputWithPooling(pooler_output=transform(output.pooler_output[0])[None])

    def merge_outputs(self, outputs: list[Any]) -> Any:
        # forward flattens (videos, tokens) before scattering, so one row of all tokens works
        # for videos that kept different counts.
        pooled = torch.cat([output.pooler_output for output in outputs], dim=1)
        return BaseModelOutputWithPooling(pooler_output=pooled)

