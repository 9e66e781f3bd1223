"""How large each sampled frame is when it reaches the vision encoder (Qwen families).

VidCom2's published evaluations ran lmms-eval with qwen-vl-utils, which sizes every frame on its
own with ``smart_resize``: height and width rounded to multiples of the vision factor (patch x
merge: 28 for Qwen2-VL/Qwen2.5-VL, 32 for Qwen3-VL), then scaled, aspect ratio kept, into
[min_pixels, max_pixels] per frame. Those bounds are our defaults per family; ``--min-pixels``
and ``--max-pixels`` override them. LLaVA-OneVision resizes every frame to its fixed square and
has no such bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# smart_resize (transformers, qwen-vl-utils) refuses a frame more than 200 times as wide as it
# is high, or as high as it is wide.
MAX_ASPECT = 200


@dataclass(frozen=True)
class PixelBounds:
    """Per-frame pixel bounds: a frame is scaled until its area lies in [min, max]."""

    min_pixels: int
    max_pixels: int

    def __post_init__(self) -> None:
        if self.min_pixels < 1 or self.max_pixels < 1:
            raise ValueError(f"pixel bounds must be positive, got {self.min_pixels} and "
                             f"{self.max_pixels}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min pixels {self.min_pixels} is above max pixels "
                             f"{self.max_pixels}")


QWEN2_VL_EVAL = PixelBounds(min_pixels=3136, max_pixels=602112)  # 4 to 768 tokens of 28 x 28
QWEN2_5_VL_EVAL = PixelBounds(min_pixels=200704, max_pixels=1605632)  # 256 to 2048 tokens

# model_type -> default per-frame bounds. Qwen2-VL, Qwen2.5-VL and Qwen3-VL: the bounds of
# VidCom2's lmms-eval runs. Qwen3-VL-MoE and Qwen3.5 (not in those runs) take Qwen3-VL's, as
# they share its vision tower.
PUBLISHED_PIXEL_BOUNDS: dict[str, PixelBounds] = {
    "qwen2_vl": QWEN2_VL_EVAL,
    "qwen2_5_vl": QWEN2_5_VL_EVAL,
    "qwen3_vl": QWEN2_5_VL_EVAL,
    "qwen3_vl_moe": QWEN2_5_VL_EVAL,
    "qwen3_5": QWEN2_5_VL_EVAL,
    "qwen3_5_moe": QWEN2_5_VL_EVAL,
}
# What the adapters read (the tests point it at their tiny checkpoints' bounds).
DEFAULT_PIXEL_BOUNDS: dict[str, PixelBounds] = dict(PUBLISHED_PIXEL_BOUNDS)


def within_aspect(frames: np.ndarray, limit: int = MAX_ASPECT) -> np.ndarray:
    """Frames (T x H x W x C) letterboxed with black, centred, to at most ``limit``:1 (a
    4096x3 animation frame becomes 4096x21), the way a player shows them in a window of that
    shape; other frames unchanged."""
    height, width = frames.shape[1:3]
    if max(height, width) <= limit * min(height, width):
        return frames
    if width > height:
        extra = math.ceil(width / limit) - height
        pad = ((0, 0), (extra // 2, extra - extra // 2), (0, 0), (0, 0))
    else:
        extra = math.ceil(height / limit) - width
        pad = ((0, 0), (0, 0), (extra // 2, extra - extra // 2), (0, 0))
    return np.pad(frames, pad)


def resolve_bounds(default: PixelBounds | None, min_pixels: int | None,
                   max_pixels: int | None) -> PixelBounds | None:
    """The bounds to use: the family's default with the given ones in its place. ValueError
    when bounds are given to a family without them, or they make no range."""
    if default is None:
        if min_pixels is not None or max_pixels is not None:
            raise ValueError("this model family takes no per-frame pixel bounds (it resizes "
                             "frames to a fixed size, or by its processor's own limits); they "
                             "apply to the Qwen families")
        return None
    return PixelBounds(default.min_pixels if min_pixels is None else min_pixels,
                       default.max_pixels if max_pixels is None else max_pixels)
