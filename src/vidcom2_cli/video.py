"""Video probing, frame-index sampling and decoding with decord.

Nothing here knows about models: callers get uint8 RGB frames plus the metadata a
Hugging Face video processor wants, and every failure surfaces as ``VideoError``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import decord
import numpy as np

from .errors import first_line

DEFAULT_NUM_FRAMES = 32
DEFAULT_MAX_FRAMES = 64
# Decoder threads per reader: enough to speed up large frames, few enough that several
# readers on a big machine do not oversubscribe it (decord's default, 0, lets FFmpeg pick
# one per core).
_DECODE_THREADS = min(4, os.cpu_count() or 1)
# decord prefixes its messages with "[hh:mm:ss] /path/to/file.cc:123: ".
_DECORD_PREFIX = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")


class VideoError(ValueError):
    """A video cannot be read or sampled; the message names the file and the problem."""


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a video without decoding it all.

    ``width``/``height`` are those of the frames decord returns, i.e. after the display
    rotation is applied. ``rotation`` is that rotation (clockwise degrees, 0/90/180/270),
    or None when PyAV is not installed to read it; ``codec`` is "unknown" in that case.
    """

    path: str
    frame_count: int
    fps: float
    duration_s: float
    width: int
    height: int
    codec: str = "unknown"
    rotation: int | None = None


@dataclass(frozen=True, eq=False)  # eq=False: comparing/hashing the frame array is meaningless
class SampledVideo:
    """Decoded frames (T x H x W x 3, uint8 RGB) and the source index of each one."""

    frames: np.ndarray
    indices: list[int]
    info: VideoInfo
    padded: int = 0

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
) -> list[int]:
    """Choose which source frames to decode, in increasing order, without duplicates.

    Without ``fps``: ``numpy.linspace(0, frame_count - 1, num_frames, dtype=int)``, the
    uniform sampling lmms-eval uses for LLaVA-OneVision (``num_frames`` defaults to
    ``DEFAULT_NUM_FRAMES``). With ``fps`` (which then overrides ``num_frames``): one frame
    every ``source_fps / fps`` source frames; more than ``max_frames`` of those are replaced
    by ``max_frames`` evenly spread ones. A video shorter than asked yields each frame once.
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
        # The epsilon keeps float noise (e.g. 60.0000001) from adding a spurious sample.
        n = max(1, math.ceil(frame_count / step - 1e-9))
        if n > max_frames:
            picked = np.linspace(0, frame_count - 1, max_frames, dtype=int)
        else:
            picked = np.minimum((np.arange(n) * step).astype(int), frame_count - 1)
    return list(dict.fromkeys(int(i) for i in picked))


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Read a video's properties; decodes only its first frame."""
    path = Path(path)
    reader = _open(path)
    first = _get_batch(reader, [0], path)
    return _info(path, reader, first, _source_fps(reader, path))


def load_video(
    path: str | os.PathLike[str],
    num_frames: int = DEFAULT_NUM_FRAMES,
    fps: float | None = None,
    max_frames: int = DEFAULT_MAX_FRAMES,
    multiple_of: int = 1,
) -> SampledVideo:
    """Decode only the sampled frames of a video (see ``sample_indices``).

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
    reader = _open(path)
    frame_count = len(reader)
    source_fps = _source_fps(reader, path)
    indices = sample_indices(
        frame_count,
        num_frames=None if fps is not None else num_frames,
        fps=fps,
        source_fps=source_fps,
        max_frames=max_frames,
    )
    padded = -len(indices) % multiple_of
    indices += [indices[-1]] * padded  # decord copies repeated indices instead of re-decoding
    frames = _get_batch(reader, indices, path)
    info = _info(path, reader, frames, source_fps)
    return SampledVideo(frames=frames, indices=indices, info=info, padded=padded)


def _check_sampling(num_frames: int | None, fps: float | None, max_frames: int) -> None:
    if num_frames is not None and num_frames < 1:
        raise VideoError(f"num_frames must be >= 1, got {num_frames}")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise VideoError(f"fps must be a positive number, got {fps}")
    if max_frames < 1:
        raise VideoError(f"max_frames must be >= 1, got {max_frames}")


def _open(path: Path) -> Any:
    """Open a decord reader, turning every failure into a one-line ``VideoError``.

    File-system problems are checked first because decord reports them all as the same
    bare ``RuntimeError("Error reading ...")``.
    """
    try:
        if path.is_dir():
            raise VideoError(f"{path}: is a directory, not a video file")
        with path.open("rb") as fh:
            if not fh.read(1):
                raise VideoError(f"{path}: file is empty")
    except (FileNotFoundError, NotADirectoryError):
        raise VideoError(f"{path}: no such file") from None
    except PermissionError:
        raise VideoError(f"{path}: permission denied") from None
    except OSError as exc:
        raise VideoError(f"{path}: cannot read file ({exc.strerror or exc})") from None

    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=_DECODE_THREADS)
    except decord.DECORDError as exc:
        if "cannot find video stream" in str(exc):
            raise VideoError(
                f"{path}: no video stream (audio-only, or a video stream without frames)"
            ) from None
        raise VideoError(f"{path}: corrupt or truncated video ({_reason(exc)})") from None
    except RuntimeError:
        # avformat_open_input failed: decord logs the reason to stderr, the exception has none.
        raise VideoError(
            f"{path}: not a readable video (unknown format, or a corrupt/truncated file)"
        ) from None
    except Exception as exc:  # e.g. decord's own AssertionError on a non-positive frame count
        raise VideoError(f"{path}: not a readable video ({_reason(exc)})") from None
    if len(reader) < 1:
        raise VideoError(f"{path}: video stream has no frames")
    return reader


def _get_batch(reader: Any, indices: list[int], path: Path) -> np.ndarray:
    try:
        batch = reader.get_batch(indices)
    except Exception as exc:
        raise VideoError(
            f"{path}: failed to decode frames {indices[0]}..{indices[-1]} of {len(reader)} "
            f"(corrupt or truncated video? {_reason(exc)})"
        ) from None
    # decord's output type follows its process-wide bridge (torch, mxnet...) which other code
    # may have set; convert rather than touch that global.
    return batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)


def _source_fps(reader: Any, path: Path) -> float:
    """Average frame rate, or frames / last timestamp when the container does not say."""
    fps = float(reader.get_avg_fps())
    if math.isfinite(fps) and fps > 0:
        return fps
    end_s = float(reader.get_frame_timestamp(-1)[-1])
    if math.isfinite(end_s) and end_s > 0:
        return len(reader) / end_s
    raise VideoError(f"{path}: cannot determine the frame rate")


def _info(path: Path, reader: Any, frames: np.ndarray, fps: float) -> VideoInfo:
    codec, rotation = _codec_and_rotation(path)
    return VideoInfo(
        path=str(path),
        frame_count=len(reader),
        fps=fps,
        duration_s=len(reader) / fps,
        width=int(frames.shape[2]),
        height=int(frames.shape[1]),
        codec=codec,
        rotation=rotation,
    )


def _codec_and_rotation(path: Path) -> tuple[str, int | None]:
    """Codec name and display rotation via PyAV (a dev dependency); decord exposes neither."""
    try:
        import av
    except ImportError:
        return "unknown", None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.best("video")
            if stream is None:
                return "unknown", None
            codec = stream.codec_context.name
            # The display matrix reaches PyAV only through decoded frames.
            frame = next(container.decode(stream), None)
            ccw = getattr(frame, "rotation", None)
    except Exception:  # best effort: decord already accepted the file
        return "unknown", None
    return codec, None if ccw is None else int(-ccw) % 360


def _reason(exc: BaseException) -> str:
    """First line of a decord error without its timestamp/source-file prefix."""
    return _DECORD_PREFIX.sub("", first_line(exc))[:200]
