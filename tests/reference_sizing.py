"""The reference per-frame sizing rule (qwen-vl-utils' ``smart_resize``), written out plainly for
the tests to compute expected frame sizes from."""

from __future__ import annotations

import math


def reference_smart_resize(height: int, width: int, factor: int, min_pixels: int,
                           max_pixels: int) -> tuple[int, int]:
    """Height and width rounded to multiples of ``factor`` (patch x merge), then, if the area
    leaves [min_pixels, max_pixels], scaled by one factor for both sides (aspect ratio kept),
    rounding down when shrinking and up when growing."""
    rounded_height = round(height / factor) * factor
    rounded_width = round(width / factor) * factor
    if rounded_height * rounded_width > max_pixels:
        shrink = math.sqrt(height * width / max_pixels)
        return (max(factor, math.floor(height / shrink / factor) * factor),
                max(factor, math.floor(width / shrink / factor) * factor))
    if rounded_height * rounded_width < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        return (math.ceil(height * grow / factor) * factor,
                math.ceil(width * grow / factor) * factor)
    return rounded_height, rounded_width
