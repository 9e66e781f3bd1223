"""Animated GIF, APNG and animated WebP, decoded with Pillow.

FFmpeg reads GIF and APNG but not animated WebP, and none of them has a seek index; Pillow
reads all three and knows each frame's display time. A still image (one frame) is refused:
it is a picture, not a video.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import VideoError
from . import Decoded

ANIMATED_KINDS = ("GIF", "PNG", "WebP")
_DEFAULT_DELAY_MS = 100  # browsers' delay for a frame that states none (or 0)


class ImageClip:
    """The frames of an animated image, timed by their delays."""

    decoder = "pillow"
    rotation: int | None = 0
    mirrored = False
    stream_index: int | None = None
    sample_aspect = None
    frame_sizes = None  # Pillow hands out every frame at the canvas size

    def __init__(self, path: Path, kind: str) -> None:
        self.path = path
        try:
            with Image.open(path) as image:
                count = getattr(image, "n_frames", 1)
                if count < 2:
                    raise VideoError(f"{path}: is a {kind} image, not a video (a still "
                                     "picture: only animated images are read)")
                self.codec = {"PNG": "apng", "GIF": "gif", "WebP": "webp"}.get(kind, kind)
                delays = []
                for i in range(count):
                    image.seek(i)
                    delay = image.info.get("duration") or _DEFAULT_DELAY_MS
                    delays.append(float(delay) / 1000)
        except VideoError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, EOFError) as exc:
            raise VideoError(f"{path}: is a {kind} image that cannot be read ({exc})") from None
        self.frame_count = count
        self._starts = np.concatenate([[0.0], np.cumsum(delays)[:-1]])
        total = float(sum(delays))
        self.fps = count / total if total > 0 else 10.0

    def timestamps(self) -> np.ndarray:
        return self._starts

    def read(self, indices: list[int]) -> Decoded:
        frames: dict[int, np.ndarray] = {}
        try:
            with Image.open(self.path) as image:
                for index in sorted(set(indices)):
                    image.seek(index)
                    frames[index] = np.asarray(image.convert("RGB"))
        except (OSError, ValueError, EOFError) as exc:
            raise VideoError(f"{self.path}: failed to decode frame ({exc})") from None
        return Decoded(np.stack([frames[i] for i in indices]))
