"""Video probing, frame-index sampling and decoding (decord first, PyAV as the fallback).

Nothing here knows about models: callers get uint8 RGB frames plus the metadata a
Hugging Face video processor wants, and every failure surfaces as ``VideoError``. Which
frames to take is decided here, by index or by timestamp; the backends in ``decoders``
only decode them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import DEFAULT_MAX_FRAMES, DEFAULT_NUM_FRAMES
from .containers import image_kind, inspect_mp4, is_jpeg_stream, read_head
from .decoders import Clip, Decoded, pyav_backend, pyav_look
from .decoders.decord_backend import DecordClip, suits
from .decoders.images import ANIMATED_KINDS, ImageClip
from .errors import VideoError

__all__ = ["DEFAULT_MAX_FRAMES", "DEFAULT_NUM_FRAMES", "SampledVideo", "VideoError", "VideoInfo",
           "load_video", "probe", "sample_indices"]


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a video without decoding it all.

    ``width``/``height`` are those of the frames handed out: upright (the display rotation,
    and a mirror, applied) and in display aspect (non-square pixels stretched to their
    display width). ``rotation`` is that rotation (clockwise degrees, 0/90/180/270) and
    ``mirrored`` whether a mirror was applied. ``codec`` is FFmpeg's codec name.
    ``frame_count`` counts frames a player shows: an edit list's hidden lead-in, frames
    before the first keyframe of a cut stream and frames an index promises but the file
    lacks are not included. ``decoder`` names the backend that decodes the file ("decord",
    "pyav" or "pillow") and ``stream_index`` the container stream it decodes (None for an
    animated image). ``frame_sizes`` counts the frames of each coded size ("WxH") of a
    stream that changes size mid-way, where that is known without decoding more (a stream
    without timestamps is decoded whole on opening); frames of another size than
    ``width`` x ``height`` are scaled to it.
    """

    path: str
    frame_count: int
    fps: float
    duration_s: float
    width: int
    height: int
    codec: str = "unknown"
    rotation: int | None = None
    mirrored: bool = False
    decoder: str = "decord"
    stream_index: int | None = None
    frame_sizes: dict[str, int] | None = None


@dataclass(frozen=True, eq=False)  # eq=False: comparing/hashing the frame array is meaningless
class SampledVideo:
    """Decoded frames (T x H x W x 3, uint8 RGB) and the source index of each one.

    ``substituted_frames`` maps each sampled index that could not be decoded (a corrupt
    packet, data cut short) to the index of the nearest decodable frame used in its place;
    ``resized`` counts the frames that were scaled to the common size (a stream that changes
    size mid-way, see ``decoders.same_size``).
    """

    frames: np.ndarray
    indices: list[int]
    info: VideoInfo
    padded: int = 0
    substituted_frames: dict[int, int] = field(default_factory=dict)
    resized: int = 0

    def metadata(self) -> dict[str, Any]:
        """Keyword metadata for a Hugging Face video processor (``VideoMetadata`` fields)."""
        return {
            "fps": self.info.fps,
            "frames_indices": list(self.indices),
            "total_num_frames": self.info.frame_count,
            "duration": self.info.duration_s,
        }


def sample_indices(
    frame_count: int,
    num_frames: int | None = None,
    fps: float | None = None,
    source_fps: float | None = None,
    max_frames: int = DEFAULT_MAX_FRAMES,
    timestamps: Sequence[float] | np.ndarray | None = None,
) -> list[int]:
    """Choose which source frames to decode, in increasing order, without duplicates.

    Without ``fps``: ``numpy.linspace(0, frame_count - 1, num_frames, dtype=int)``, the
    uniform sampling lmms-eval uses for LLaVA-OneVision (``num_frames`` defaults to
    ``DEFAULT_NUM_FRAMES``). With ``fps`` (which then overrides ``num_frames``): one frame
    every ``1 / fps`` seconds, the frame shown at that moment; ``timestamps`` (seconds of
    each frame, from the first) make that exact for a variable frame rate, without them
    frames are taken as ``1 / source_fps`` apart. More than ``max_frames`` of those are
    replaced by ``max_frames`` evenly spread ones. A video shorter than asked yields each
    frame once.
    """
    _check_sampling(num_frames, fps, max_frames)
    if frame_count < 1:
        raise VideoError(f"frame_count must be >= 1, got {frame_count}")
    if fps is None:
        n = DEFAULT_NUM_FRAMES if num_frames is None else num_frames
        picked = np.linspace(0, frame_count - 1, n, dtype=int)
    else:
        if source_fps is None or not math.isfinite(source_fps) or source_fps <= 0:
            raise VideoError(f"fps sampling needs the video's frame rate, got {source_fps}")
        step = source_fps / fps
        times = None
        if timestamps is not None and len(timestamps) == frame_count and frame_count > 1:
            times = np.asarray(timestamps, dtype=np.float64) - float(timestamps[0])
            if not (np.all(np.isfinite(times)) and np.all(np.diff(times) > 0)):
                times = None
        if times is not None:
            # The last frame shows for one average frame duration.
            duration = float(times[-1]) * frame_count / (frame_count - 1)
            n = max(1, math.ceil(duration * fps - 1e-6))
        else:
            # The epsilon keeps float noise (e.g. 60.0000001) from adding a spurious sample.
            n = max(1, math.ceil(frame_count / step - 1e-9))
        if n > max_frames:
            picked = np.linspace(0, frame_count - 1, max_frames, dtype=int)
        elif times is not None:
            moments = np.arange(n) / fps
            picked = np.searchsorted(times, moments + 1e-6, side="right") - 1
            picked = np.clip(picked, 0, frame_count - 1)
        else:
            picked = np.minimum((np.arange(n) * step).astype(int), frame_count - 1)
    return list(dict.fromkeys(int(i) for i in picked))


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Read a video's properties; decodes only its first frame."""
    path = Path(path)
    clip, decoded = _decode(path, lambda clip: [0])
    return _describe(path, clip, decoded)


def load_video(
    path: str | os.PathLike[str],
    num_frames: int = DEFAULT_NUM_FRAMES,
    fps: float | None = None,
    max_frames: int = DEFAULT_MAX_FRAMES,
    multiple_of: int = 1,
) -> SampledVideo:
    """Decode only the sampled frames of a video (see ``sample_indices``), upright.

    ``multiple_of`` pads by repeating the last frame (and its index) until the frame count
    is a multiple of it: the Qwen2-VL family groups frames in temporal pairs.
    """
    path = Path(path)
    try:
        _check_sampling(num_frames, fps, max_frames)
        if multiple_of < 1:
            raise VideoError(f"multiple_of must be >= 1, got {multiple_of}")
    except VideoError as exc:
        raise VideoError(f"{path}: {exc}") from None

    def choose(clip: Clip) -> list[int]:
        indices = sample_indices(
            clip.frame_count,
            num_frames=None if fps is not None else num_frames,
            fps=fps,
            source_fps=clip.fps,
            max_frames=max_frames,
            timestamps=clip.timestamps() if fps is not None else None,
        )
        return indices + [indices[-1]] * (-len(indices) % multiple_of)

    clip, indices, decoded = _decode_chosen(path, choose)
    return SampledVideo(
        frames=decoded.frames,
        indices=indices,
        info=_describe(path, clip, decoded),
        padded=len(indices) - len(set(indices)),
        substituted_frames=dict(decoded.substituted),
        resized=decoded.resized,
    )


def _check_sampling(num_frames: int | None, fps: float | None, max_frames: int) -> None:
    if num_frames is not None and num_frames < 1:
        raise VideoError(f"num_frames must be >= 1, got {num_frames}")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise VideoError(f"fps must be a positive number, got {fps}")
    if max_frames < 1:
        raise VideoError(f"max_frames must be >= 1, got {max_frames}")


def _describe(path: Path, clip: Clip, decoded: Decoded) -> VideoInfo:
    frames = decoded.frames
    sizes = clip.frame_sizes
    return VideoInfo(
        path=str(path),
        frame_count=clip.frame_count,
        fps=clip.fps,
        duration_s=clip.frame_count / clip.fps,
        width=int(frames.shape[2]),
        height=int(frames.shape[1]),
        codec=clip.codec,
        rotation=clip.rotation,
        mirrored=clip.mirrored,
        decoder=clip.decoder,
        stream_index=clip.stream_index,
        frame_sizes={f"{width}x{height}": count for (width, height), count in sizes.items()}
        if sizes and len(sizes) > 1 else None,
    )


# --- opening and choosing a decoder ----------------------------------------------------------


def _decode(path: Path, choose: Callable[[Clip], list[int]]) -> tuple[Clip, Decoded]:
    clip, _, decoded = _decode_chosen(path, choose)
    return clip, decoded


def _decode_chosen(
    path: Path, choose: Callable[[Clip], list[int]]
) -> tuple[Clip, list[int], Decoded]:
    """Open the file, choose frames with ``choose(clip)`` and decode them: with decord when
    it suits the file, with PyAV when it does not or when decord fails at any step."""
    clip, look = _open(path)
    if isinstance(clip, DecordClip):
        indices = choose(clip)
        try:
            return clip, indices, clip.read(indices)
        except VideoError:
            if look is None:
                raise
            clip = pyav_backend.open_clip(path, look)  # counts the frames itself
    indices = choose(clip)
    return clip, indices, clip.read(indices)


def _open(path: Path) -> tuple[Clip, pyav_look.Look | None]:
    """Open a video, turning every failure into a one-line ``VideoError``.

    File-system problems, images and (for MP4/MOV) encrypted or frameless files are checked
    from the file's bytes first, because decoders report them as bare or misleading errors
    (or decode garbage from an encrypted stream).
    """
    head = read_head(path)
    image = image_kind(head)
    if image in ANIMATED_KINDS:
        return ImageClip(path, image), None
    stream = image == "JPEG" and is_jpeg_stream(path)  # Motion JPEG: pictures back to back
    if image is not None and not stream:
        raise VideoError(f"{path}: is a {image} image, not a video")
    mp4 = inspect_mp4(path, head)
    video = mp4.video if mp4 is not None else None
    if mp4 is not None and video is not None:
        if video.scheme is not None:
            raise VideoError(
                f"{path}: is encrypted (DRM, scheme '{video.scheme}'); cannot decode it"
            )
        if not mp4.has_media:
            raise VideoError(
                f"{path}: holds no decodable frames (header only: it describes a video "
                "track but has no media data)"
            )
        if video.samples == 0 and not mp4.fragmented:
            raise VideoError(f"{path}: holds no decodable frames (its video track is empty)")
    look = pyav_look.look(path, "mjpeg" if stream else None)
    if look.decodable and suits(look):
        try:
            return DecordClip(path, mp4, look), look
        except VideoError:
            pass  # e.g. broken metadata: PyAV indexes the packets itself
    return pyav_backend.open_clip(path, look), look
