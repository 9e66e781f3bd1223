"""Decoding backends behind ``video.load_video`` and ``video.probe``.

Each backend opens a file as a ``Clip``: how many frames a player would show, their frame
rate and timestamps, and ``read(indices)``, which decodes only those frames (upright) and
says which ones it had to replace by their nearest decodable neighbour. Sampling (which
indices) stays in ``video``; the backends only decode.

- ``decord_backend``: decord, the fast first choice for the containers and codecs it reads
  correctly (MP4/MOV, Matroska/WebM and AVI with H.264, MPEG-4, VP8/VP9, MJPEG, ...).
- ``pyav_backend``: PyAV (FFmpeg 8), the fallback for everything else: codecs decord's
  FFmpeg 4.1 lacks, streams without a reliable index or duration, broken packets.
- ``images``: Pillow, for animated GIF, APNG and animated WebP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol

import numpy as np


@dataclass
class Decoded:
    """Frames (T x H x W x 3 uint8 RGB, upright) for the requested indices, for each index
    that could not be decoded the index of the frame used instead, and how many of the T
    frames were scaled to the common size (a stream that changes size mid-way)."""

    frames: np.ndarray
    substituted: dict[int, int] = field(default_factory=dict)
    resized: int = 0


class Clip(Protocol):
    decoder: str  # "decord", "pyav" or "pillow"
    frame_count: int  # frames a player shows (hidden lead-in and undecodable starts excluded)
    fps: float
    codec: str
    rotation: int | None  # clockwise degrees applied to make frames upright
    mirrored: bool  # a mirror in the display matrix was applied too
    stream_index: int | None  # the container's stream that was decoded
    sample_aspect: Fraction | None  # pixel aspect ratio (width / height of one pixel)
    # Frames per coded (width, height) over the whole stream, in order of first appearance,
    # where every frame was decoded on opening (a stream without timestamps); else None.
    frame_sizes: dict[tuple[int, int], int] | None

    def timestamps(self) -> np.ndarray:
        """Presentation time of every displayed frame, seconds from the first one."""
        ...

    def read(self, indices: list[int]) -> Decoded:
        """Decode these displayed-frame indices (increasing, repeats allowed)."""
        ...


# --- one size for every frame -----------------------------------------------------------------


def most_common(sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The size that occurs most often; among equals, the one that comes first."""
    counts: dict[tuple[int, int], int] = {}
    for size in sizes:
        counts[size] = counts.get(size, 0) + 1
    return max(counts, key=lambda size: counts[size])  # max keeps the first of equals


def same_size(frames: Sequence[np.ndarray], size: tuple[int, int] | None = None
              ) -> tuple[np.ndarray, int]:
    """Stack frames (H x W x 3), scaling those of another size to ``size`` (height, width;
    default: the most common among them), and say how many were scaled.

    A stream may change resolution mid-way (a raw H.264 stream spliced from two encodes, a
    broadcast switching formats); a model takes one size, so the others are stretched to it,
    as FFmpeg's own tools do when the size changes under a fixed output.
    """
    if size is None:
        size = most_common([frame.shape[:2] for frame in frames])
    if all(frame.shape[:2] == size for frame in frames):
        return np.stack(frames), 0
    from PIL import Image

    height, width = size
    scaled: dict[int, np.ndarray] = {}  # by id: a repeated frame is scaled once
    out = np.empty((len(frames), height, width, 3), np.uint8)
    resized = 0
    for i, frame in enumerate(frames):
        if frame.shape[:2] == size:
            out[i] = frame
            continue
        if id(frame) not in scaled:
            scaled[id(frame)] = np.asarray(
                Image.fromarray(frame).resize((width, height), Image.BILINEAR))
        out[i] = scaled[id(frame)]
        resized += 1
    return out, resized


# --- display matrix --------------------------------------------------------------------------


def orientation(matrix: bytes | None) -> tuple[int, bool]:
    """(clockwise rotation in degrees, mirrored afterwards) that turn decoded frames into
    what a player shows, from the 36 bytes of an FFmpeg display matrix (native int32).

    This follows FFmpeg's own players (ffmpeg/ffplay autorotate): the angle of
    ``av_display_rotation_get``, then a transpose, an anti-transpose or a flip chosen from
    the signs of the matrix. Angles that are not quarter turns are rounded to one.
    """
    if matrix is None or len(matrix) < 36:
        return 0, False
    m = np.frombuffer(matrix[:36], dtype=np.int32).astype(np.float64)
    scale0, scale1 = float(np.hypot(m[0], m[3])), float(np.hypot(m[1], m[4]))
    if scale0 == 0 or scale1 == 0:
        return 0, False
    rotation_get = -float(np.degrees(np.arctan2(m[1] / scale1, m[0] / scale0)))
    theta = -round(rotation_get)
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    quarter = round(theta / 90) % 4 * 90
    if abs(theta - 90) < 1:
        return (90, True) if m[3] > 0 else (90, False)  # transpose, or turn clockwise
    if abs(theta - 180) < 1:
        hflip, vflip = m[0] < 0, m[4] < 0
        return {(True, True): (180, False), (True, False): (0, True),
                (False, True): (180, True), (False, False): (0, False)}[(hflip, vflip)]
    if abs(theta - 270) < 1:
        return (270, True) if m[3] < 0 else (270, False)  # anti-transpose, or counter-cw
    if abs(theta) < 1 or abs(theta - 360) < 1:
        return (180, True) if m[4] < 0 else (0, False)  # a vertical flip, or nothing
    return quarter, False


def make_upright(frames: np.ndarray, rotation: int, mirrored: bool) -> np.ndarray:
    """Rotate frames (T x H x W x C) clockwise by ``rotation`` degrees, then mirror them
    left-right when ``mirrored``: what a player does with the display matrix."""
    if rotation % 360:
        frames = np.rot90(frames, k=-(rotation // 90), axes=(1, 2))
    if mirrored:
        frames = frames[:, :, ::-1]
    if rotation % 360 or mirrored:
        frames = np.ascontiguousarray(frames)
    return frames


def display_aspect(frames: np.ndarray, sample_aspect: Fraction | None) -> np.ndarray:
    """Stretch frames whose pixels are not square to their display width (height kept)."""
    if sample_aspect is None or sample_aspect <= 0 or sample_aspect == 1:
        return frames
    if not Fraction(1, 8) <= sample_aspect <= 8:  # nonsense in a header: ignore it
        return frames
    height, width = frames.shape[1:3]
    target = max(1, round(width * sample_aspect))
    if target == width:
        return frames
    from PIL import Image

    out = np.empty((frames.shape[0], height, target, 3), np.uint8)
    for i, frame in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(frame).resize((target, height), Image.BILINEAR))
    return out


def library_logs(show: bool) -> None:
    """Let FFmpeg's log lines (PyAV's and decord's) reach stderr, or keep them quiet (the
    default: one error line is all a user sees, unless --debug)."""
    import av
    import decord

    av.logging.set_level(av.logging.WARNING if show else None)
    decord.logging.set_level(decord.logging.WARNING if show else decord.logging.QUIET)
