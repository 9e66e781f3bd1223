"""InternVL (OpenGVLab/InternVL3-*-hf and later, transformers' ``internvl``).

A video is a run of frames, each an image to the model: the prompt holds
``Frame1: <img><IMG_CONTEXT>...</img>\\nFrame2: <img>...`` (text between the frames: a label and
the image start/end tokens, all kept), and the encoder output is read as ``image`` features.
Each frame is one 448 x 448 tile (no thumbnail or tiling for video), InternViT then a 0.5 pixel
shuffle: 16 x 16 = 256 tokens per frame on the real models. Positions are 1-D and, as for LLaVA,
the compressed sequence gets dense positions.
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


class InternVLAdapter(DensePositionsAdapter):
    @property
    def placeholder_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def encoder_output_key(self) -> str:
        return "image"

    @property
    def video_mark_ids(self) -> frozenset[int]:
        """The template's ``<video>`` (expanded by the processor into the frames) and the image
        token repeated in each frame."""
        return frozenset({self.video_token_id, int(self.processor.tokenizer.video_token_id)})

    @property
    def video_end_ids(self) -> frozenset[int]:
        """Each frame closes with ``</img>``; the last one ends the video."""
        return frozenset({int(self.processor.end_image_token_id)})

    @torch.inference_mode()
    def run_encoder(self, item: PreparedItem) -> Any:
        config = self.model.config
        output = self.model.model.get_image_features(
            pixel_values=item.inputs["pixel_values"],
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            return_dict=True)
        return BaseModelOutputWithPooling(pooler_output=output.pooler_output)  # (T, N, D)

    def describe(self, output: Any, inputs: dict[str, torch.Tensor]) -> EncodedVideo:
        features = output.pooler_output
        side = math.isqrt(features.shape[1])
        if side * side != features.shape[1]:
            raise RuntimeError(f"expected a square grid of tokens per frame, got "
                               f"{features.shape[1]}")
        return EncodedVideo(features=features, grid=(side, side), output=output)

    def signal_layer(self) -> SignalLayer:
        config = self.model.config
        return feature_layer(self.model.model.vision_tower, config.vision_feature_layer,
                             config.vision_feature_select_strategy)

    def pool_signals(self, values: torch.Tensor, inputs: dict[str, torch.Tensor]
                     ) -> torch.Tensor:
        """Averaged over the patches each pixel-shuffled token gathers (2x2 at the usual
        downsample ratio of 0.5)."""
        window = round(1 / self.model.config.downsample_ratio)
        return grid_tokens(torch.nn.functional.avg_pool2d(square_grids(values), window))

    def feature_keep_mask(self, plan: KeepPlan) -> torch.Tensor:
        return plan.flat_mask()

    def map_output(self, output: Any, transform: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        # (1, K, D): the model scatters features in order, whatever their shape
        return BaseModelOutputWithPooling(
            pooler_output=transform(output.pooler_output.flatten(0, 1))[None])

    def merge_outputs(self, outputs: list[Any]) -> Any:
        return BaseModelOutputWithPooling(pooler_output=torch.cat(
            [output.pooler_output.flatten(0, -2)[None] for output in outputs], dim=1))
