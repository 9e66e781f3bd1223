"""Video probing, frame-index sampling and decoding with decord.

Nothing here knows about models: callers get uint8 RGB frames plus the metadata a
Hugging Face video processor wants, and every failure surfaces as ``VideoError``.
"""

from __future__ import annotations

import math
import os
import re
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import decord
import numpy as np

from .containers import Mp4, image_kind, inspect_mp4
from .errors import first_line

DEFAULT_NUM_FRAMES = 32
DEFAULT_MAX_FRAMES = 64
# Decoder threads per reader: enough to speed up large frames, few enough that several
# readers on a big machine do not oversubscribe it (decord's default, 0, lets FFmpeg pick
# one per core).
_DECODE_THREADS = min(4, os.cpu_count() or 1)
# decord prefixes its messages with "[hh:mm:ss] /path/to/file.cc:123: ", sometimes twice.
_DECORD_PREFIX = re.compile(r"\[[\d:]+\]\s+\S+:\d+:\s*")
# Frames whose timestamp lies more than this before the stream start are taken as a broken
# timestamp (e.g. a missing pts) rather than an edit list's hidden lead-in.
_MAX_LEAD_S = 600.0
# Codecs the FFmpeg 4.1 inside decord's wheels decodes (AV1, for one, it does not).
_DECORD_DECODES = {
    "h264", "hevc", "mpeg4", "mpeg2video", "mpeg1video", "vp8", "vp9", "mjpeg", "h263",
    "prores", "theora",
}


class VideoError(ValueError):
    """A video cannot be read or sampled; the message names the file and the problem."""


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a video without decoding it all.

    ``width``/``height`` are those of the frames handed out, i.e. upright: the display
    rotation is applied. ``rotation`` is that rotation (clockwise degrees, 0/90/180/270),
    read from the MP4/MOV header, or with PyAV for other containers (None when PyAV is not
    installed there). ``codec`` is PyAV's decoder name, or without PyAV the one named by the
    MP4 sample entry ("unknown" for other containers). ``frame_count`` counts displayed
    frames: an edit list's hidden lead-in frames are not included.
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
    source = _open(Path(path))
    fps = _source_fps(source)
    _, info = _finish(source, _read_frames(source, [0]), fps)
    return info


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
    source = _open(path)
    source_fps = _source_fps(source)
    indices = sample_indices(
        source.frame_count,
        num_frames=None if fps is not None else num_frames,
        fps=fps,
        source_fps=source_fps,
        max_frames=max_frames,
    )
    padded = -len(indices) % multiple_of
    indices += [indices[-1]] * padded  # decord copies repeated indices instead of re-decoding
    frames, info = _finish(source, _read_frames(source, indices), source_fps)
    return SampledVideo(frames=frames, indices=indices, info=info, padded=padded)


def _check_sampling(num_frames: int | None, fps: float | None, max_frames: int) -> None:
    if num_frames is not None and num_frames < 1:
        raise VideoError(f"num_frames must be >= 1, got {num_frames}")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise VideoError(f"fps must be a positive number, got {fps}")
    if max_frames < 1:
        raise VideoError(f"max_frames must be >= 1, got {max_frames}")


# --- opening ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """An open decord reader and what was learnt about the file around it."""

    path: Path
    reader: Any
    mp4: Mp4 | None  # None: not an ISO BMFF / QuickTime file
    lead: int  # leading decord indices never displayed (an edit list's lead-in)
    frame_count: int  # displayed frames: len(reader) - lead


def _open(path: Path) -> _Source:
    """Open a video, turning every failure into a one-line ``VideoError``.

    File-system problems, images and (for MP4/MOV) encrypted or frameless files are checked
    before decord opens the file, because decord reports them all as bare or misleading
    errors (or decodes garbage from an encrypted stream).
    """
    head = _read_head(path)
    image = image_kind(head)
    if image is not None:
        hint = " (animated images are not read either: convert it to MP4)" if image in (
            "GIF", "PNG", "WebP") else ""
        raise VideoError(f"{path}: is a {image} image, not a video{hint}")
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
    reader = _decord_reader(path, mp4)
    total = len(reader)
    if total < 1:
        raise VideoError(f"{path}: video stream has no frames")
    lead = _hidden_lead(reader, total) if video is not None and video.edited else 0
    return _Source(path=path, reader=reader, mp4=mp4, lead=lead, frame_count=total - lead)


def _read_head(path: Path) -> bytes:
    try:
        if path.is_dir():
            raise VideoError(f"{path}: is a directory, not a video file")
        with path.open("rb") as fh:
            head = fh.read(32)
    except (FileNotFoundError, NotADirectoryError):
        raise VideoError(f"{path}: no such file") from None
    except PermissionError:
        raise VideoError(f"{path}: permission denied") from None
    except OSError as exc:
        raise VideoError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if not head:
        raise VideoError(f"{path}: file is empty")
    return head


def _decord_reader(path: Path, mp4: Mp4 | None) -> Any:
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=_DECODE_THREADS)
    except decord.DECORDError as exc:
        if "cannot find video stream" in str(exc):
            raise VideoError(f"{path}: {_no_stream_reason(path, mp4)}") from None
        if "Cannot create buffer source" in str(exc):
            # FFmpeg could not learn the pixel format: not one frame decoded while probing.
            raise VideoError(
                f"{path}: holds no decodable frames (frame data missing or corrupt)"
            ) from None
        raise VideoError(f"{path}: corrupt or truncated video ({_reason(exc)})") from None
    except RuntimeError:
        # avformat_open_input failed: decord logs the reason to stderr, the exception has none.
        raise VideoError(
            f"{path}: not a readable video (unknown format, or a corrupt/truncated file)"
        ) from None
    except Exception as exc:  # e.g. decord's own AssertionError on a non-positive frame count
        raise VideoError(f"{path}: not a readable video ({_reason(exc)})") from None


def _no_stream_reason(path: Path, mp4: Mp4 | None) -> str:
    """Why decord found no video stream: none at all, or one its FFmpeg cannot decode."""
    if mp4 is not None and mp4.video is not None:
        codec: str | None = mp4.video.codec
    else:
        codec = _pyav_details(path, need_rotation=False)[0]
    if codec and codec not in _DECORD_DECODES:
        return (
            f"its video stream ({codec}) cannot be decoded by decord's FFmpeg; "
            "re-encode it, e.g. to H.264"
        )
    return "no video stream (audio-only, or a video stream without frames)"


def _hidden_lead(reader: Any, total: int) -> int:
    """Frames before the presentation start that an edit list hides (e.g. a stream copy cut
    between keyframes). decord counts them in ``len(reader)`` and gives them negative
    timestamps, but the decoder drops them, so they must not be sampled."""
    try:
        starts = np.asarray(reader.get_frame_timestamp(np.arange(total)))[:, 0]
    except Exception:
        return 0
    hidden = starts < 0
    lead = int(hidden.sum())
    if lead == 0 or lead >= total or not hidden[:lead].all():
        return 0
    return lead if float(starts[0]) > -_MAX_LEAD_S else 0


# --- decoding --------------------------------------------------------------------------------


def _read_frames(source: _Source, indices: list[int]) -> np.ndarray:
    """Decode the frames at these displayed-frame indices (increasing, repeats allowed)."""
    positions = _decord_positions(source, indices)
    try:
        return _as_numpy(source.reader.get_batch(positions))
    except Exception as exc:
        if "must exactly match" not in str(exc):
            raise VideoError(_decode_failure(source, indices, exc)) from None
    # decord mislays frames whose RGB rows FFmpeg pads to a multiple of their width (e.g.
    # 48 or 16 pixels wide, also after rotating a 48-pixel-high video): get_batch refuses
    # them, single frames come out with a bogus channel count. Read those one by one.
    try:
        return _read_one_by_one(source, positions)
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(_decode_failure(source, indices, exc)) from None


def _decord_positions(source: _Source, indices: list[int]) -> list[int]:
    """decord indices of displayed frames.

    With an edit list's hidden lead-in, decord seeks by timestamp (displayed frame i is
    decord index lead + i) except inside the first group of pictures, which it reaches by
    decoding forward from the start and counting output frames (the hidden ones are never
    output, so there displayed frame i is decord index i).
    """
    if not source.lead:
        return list(indices)
    keys = list(source.reader.get_key_indices())
    total = len(source.reader)
    return [
        i if _keyframe_of(i + source.lead, keys, total) == 0 else i + source.lead
        for i in indices
    ]


def _keyframe_of(position: int, keys: list[int], total: int) -> int:
    """The keyframe decord seeks to for a position (its VideoReader::LocateKeyframe)."""
    if not keys or position <= keys[0]:
        return 0
    if position >= total:
        return keys[-1]
    return keys[bisect_right(keys, position) - 1]


def _read_one_by_one(source: _Source, positions: list[int]) -> np.ndarray:
    reader = _decord_reader(source.path, source.mp4)  # fresh: positions assume a new reader
    out: np.ndarray | None = None
    first: dict[int, int] = {}
    for slot, position in enumerate(positions):
        if position in first:
            assert out is not None
            out[slot] = out[first[position]]
            continue
        first[position] = slot
        frame = _as_numpy(reader[position])
        height, width, channels = frame.shape
        if channels != 3:  # the bytes are rows of `width * channels`, RGB first, then padding
            frame = frame.reshape(height, width * channels)[:, : width * 3]
            frame = frame.reshape(height, width, 3)
        if out is None:
            out = np.empty((len(positions), height, width, 3), np.uint8)
        out[slot] = frame
    assert out is not None
    return out


def _as_numpy(batch: Any) -> np.ndarray:
    # decord's output type follows its process-wide bridge (torch, mxnet...) which other code
    # may have set; convert rather than touch that global.
    return batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)


def _decode_failure(source: _Source, indices: list[int], exc: BaseException) -> str:
    return (
        f"{source.path}: failed to decode frames {indices[0]}..{indices[-1]} of "
        f"{source.frame_count} (corrupt or truncated video? {_reason(exc)})"
    )


def _source_fps(source: _Source) -> float:
    """Average frame rate, or frames / last timestamp when the container does not say."""
    reader = source.reader
    fps = float(reader.get_avg_fps())
    if math.isfinite(fps) and fps > 0:
        return fps
    end_s = float(reader.get_frame_timestamp(-1)[-1])
    if math.isfinite(end_s) and end_s > 0:
        return source.frame_count / end_s
    raise VideoError(f"{source.path}: cannot determine the frame rate")


def _finish(source: _Source, frames: np.ndarray, fps: float) -> tuple[np.ndarray, VideoInfo]:
    """Turn the frames upright and describe the video."""
    codec, rotation, coded_size = _codec_rotation_size(source)
    frames = _upright(frames, rotation, coded_size, decord_rotates=source.mp4 is not None)
    info = VideoInfo(
        path=str(source.path),
        frame_count=source.frame_count,
        fps=fps,
        duration_s=source.frame_count / fps,
        width=int(frames.shape[2]),
        height=int(frames.shape[1]),
        codec=codec,
        rotation=rotation,
    )
    return frames, info


def _upright(
    frames: np.ndarray,
    rotation: int | None,
    coded_size: tuple[int, int] | None,
    decord_rotates: bool,
) -> np.ndarray:
    """Apply the display rotation unless decord already did.

    decord's FFmpeg (4.x) rotates MP4/MOV frames itself but sees no rotation in Matroska or
    WebM. A 90/270-degree turn of a non-square video shows in the frame size; otherwise the
    container type decides.
    """
    if not rotation:
        return frames
    height, width = frames.shape[1:3]
    if (
        rotation in (90, 270)
        and coded_size is not None
        and coded_size[0] != coded_size[1]
        and (width, height) in (coded_size, coded_size[::-1])
    ):
        applied = (width, height) == coded_size[::-1]
    else:
        applied = decord_rotates
    if applied:
        return frames
    return np.ascontiguousarray(np.rot90(frames, k=-(rotation // 90), axes=(1, 2)))


def _codec_rotation_size(source: _Source) -> tuple[str, int | None, tuple[int, int] | None]:
    """Codec name, clockwise display rotation and coded (width, height) of the video stream.

    MP4/MOV headers give all three without PyAV (a dev dependency); PyAV's codec name is
    preferred when installed, and PyAV reads the rotation of other containers.
    """
    codec, rotation, size = "unknown", None, None
    video = source.mp4.video if source.mp4 is not None else None
    if video is not None:
        codec = video.codec
        rotation, size = video.rotation, video.coded_size
    named, turned, coded = _pyav_details(source.path, need_rotation=rotation is None)
    if rotation is None:
        rotation, size = turned, coded
    return named or codec, rotation, size


def _pyav_details(
    path: Path, need_rotation: bool
) -> tuple[str | None, int | None, tuple[int, int] | None]:
    """Codec name, clockwise rotation and coded size via PyAV; Nones where unknown."""
    try:
        import av
    except ImportError:
        return None, None, None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.best("video")
            if stream is None:
                return None, None, None
            codec = stream.codec_context.name
            width, height = stream.codec_context.width, stream.codec_context.height
            size = (width, height) if width > 0 and height > 0 else None
            if not need_rotation:
                return codec, None, size
            # The display matrix reaches PyAV only through decoded frames.
            frame = next(container.decode(stream), None)
            ccw = getattr(frame, "rotation", None)
    except Exception:  # best effort: decord already accepted the file
        return None, None, None
    return codec, None if ccw is None else round(-float(ccw) / 90) % 4 * 90, size


def _reason(exc: BaseException) -> str:
    """First line of a decord error without its timestamp/source-file prefixes."""
    return _DECORD_PREFIX.sub("", first_line(exc))[:200]
