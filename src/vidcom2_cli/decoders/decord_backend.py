"""decord decoding: the fast path for the files decord reads correctly.

``video`` sends a file here only when its container and codec are ones decord's FFmpeg 4.1
indexes and seeks correctly (``suits``); every failure here is a ``VideoError`` that makes
``video`` fall back to PyAV.
"""

from __future__ import annotations

import os
import re
from bisect import bisect_right
from pathlib import Path
from typing import Any

import decord
import numpy as np

from ..containers import Mp4
from ..errors import VideoError, first_line
from . import Decoded, display_aspect
from .pyav_look import Look

# Decoder threads per reader: enough to speed up large frames, few enough that several
# readers on a big machine do not oversubscribe it (decord's default, 0, lets FFmpeg pick
# one per core).
_DECODE_THREADS = min(4, os.cpu_count() or 1)
# decord prefixes its messages with "[hh:mm:ss] /path/to/file.cc:123: ", sometimes twice.
_DECORD_PREFIX = re.compile(r"\[[\d:]+\]\s+\S+:\d+:\s*")
# Frames whose timestamp lies more than this before the stream start are taken as a broken
# timestamp (e.g. a missing pts) rather than an edit list's hidden lead-in.
_MAX_LEAD_S = 600.0
# Containers whose index decord's FFmpeg 4.1 seeks by correctly. Transport and program
# streams, FLV, MXF, Ogg, IVF and raw streams have no such index: decord counts and seeks
# their frames by guesswork (a transport stream comes back shifted by several frames).
_FORMATS = {"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi"}
# Codecs it decodes and seeks correctly there. Not HEVC: after a seek to an open-GOP
# keyframe (x265's default) it returns the wrong frames. Not AV1 or VVC: it lacks them.
_CODECS = {"h264", "mpeg4", "mjpeg", "vp8", "vp9", "h263", "mpeg1video", "mpeg2video",
           "prores"}
_HIGH_DEPTH = re.compile(r"p1[0-6]")  # yuv420p10le, yuv444p12le, ...

decord.logging.set_level(decord.logging.QUIET)  # its FFmpeg writes straight to stderr


def suits(look: Look) -> bool:
    """Whether decord reads this file correctly (otherwise PyAV reads it)."""
    return (
        look.format in _FORMATS
        and look.codec in _CODECS
        and not look.mirrored
        and look.video_streams == 1  # decord's own choice among several is not ours to know
        and not (look.pix_fmt and _HIGH_DEPTH.search(look.pix_fmt))
    )


def reason(exc: BaseException) -> str:
    """First line of a decord error without its timestamp/source-file prefixes."""
    return _DECORD_PREFIX.sub("", first_line(exc))[:200]


class DecordClip:
    """An open decord reader and what was learnt about the file around it."""

    decoder = "decord"

    def __init__(self, path: Path, mp4: Mp4 | None, look: Look) -> None:
        self.path, self.mp4, self.look = path, mp4, look
        self.reader = _reader(path)
        total = len(self.reader)
        if total < 1:
            raise VideoError(f"{path}: video stream has no frames")
        video = mp4.video if mp4 is not None else None
        self.lead = _hidden_lead(self.reader, total) if video is not None and video.edited else 0
        self.frame_count = total - self.lead
        self._times: np.ndarray | None = None
        self.fps = self._fps()
        self.codec = look.codec
        self.stream_index: int | None = look.stream_index
        self.mirrored = False
        self.sample_aspect = look.sample_aspect
        self.frame_sizes: dict[tuple[int, int], int] | None = None  # not decoded whole
        if video is not None:
            self.rotation: int | None = video.rotation
            self._coded_size = video.coded_size
        else:
            self.rotation, self._coded_size = look.rotation, look.coded_size

    def _fps(self) -> float:
        """The container's average frame rate when the frames' timestamps agree with it
        (within 1%), else the rate the timestamps give (a variable frame rate, or a container
        that does not say): frames / last timestamp."""
        fps = float(self.reader.get_avg_fps())
        try:
            times = self.timestamps()
        except Exception:
            times = np.zeros(0)
        span = float(times[-1]) if len(times) > 1 else 0.0
        measured = (len(times) - 1) / span if np.isfinite(span) and span > 0 else None
        if np.isfinite(fps) and fps > 0 and (measured is None or abs(measured - fps) < 0.01 * fps):
            return fps
        if measured is not None:
            return measured
        end_s = float(self.reader.get_frame_timestamp(-1)[-1])
        if np.isfinite(end_s) and end_s > 0:
            return self.frame_count / end_s
        raise VideoError(f"{self.path}: cannot determine the frame rate")

    def timestamps(self) -> np.ndarray:
        """Start time of every displayed frame, from the first (decord keeps them in memory:
        about 13 ms for 108,000 frames)."""
        if self._times is None:
            total = len(self.reader)
            starts = np.asarray(self.reader.get_frame_timestamp(np.arange(self.lead, total)))
            starts = starts[:, 0].astype(np.float64)
            self._times = starts - float(starts[0])
        return self._times

    def read(self, indices: list[int]) -> Decoded:
        frames = _upright(self._read(indices), self.rotation, self._coded_size,
                          decord_rotates=self.mp4 is not None)
        return Decoded(display_aspect(frames, self.sample_aspect))

    def _read(self, indices: list[int]) -> np.ndarray:
        """Decode the frames at these displayed-frame indices (increasing, repeats allowed)."""
        positions = self._positions(indices)
        try:
            return _as_numpy(self.reader.get_batch(positions))
        except Exception as exc:
            if "must exactly match" not in str(exc):
                raise VideoError(self._failure(indices, exc)) from None
        # decord mislays frames whose RGB rows FFmpeg pads to a multiple of their width (e.g.
        # 48 or 16 pixels wide, also after rotating a 48-pixel-high video): get_batch refuses
        # them, single frames come out with a bogus channel count. Read those one by one.
        try:
            return self._read_one_by_one(positions)
        except VideoError:
            raise
        except Exception as exc:
            raise VideoError(self._failure(indices, exc)) from None

    def _positions(self, indices: list[int]) -> list[int]:
        """decord indices of displayed frames.

        With an edit list's hidden lead-in, decord seeks by timestamp (displayed frame i is
        decord index lead + i) except inside the first group of pictures, which it reaches
        by decoding forward from the start and counting output frames (the hidden ones are
        never output, so there displayed frame i is decord index i).
        """
        if not self.lead:
            return list(indices)
        keys = list(self.reader.get_key_indices())
        total = len(self.reader)
        return [
            i if _keyframe_of(i + self.lead, keys, total) == 0 else i + self.lead
            for i in indices
        ]

    def _read_one_by_one(self, positions: list[int]) -> np.ndarray:
        reader = _reader(self.path)  # fresh: positions assume a new reader
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

    def _failure(self, indices: list[int], exc: BaseException) -> str:
        return (
            f"{self.path}: failed to decode frames {indices[0]}..{indices[-1]} of "
            f"{self.frame_count} (corrupt or truncated video? {reason(exc)})"
        )


def _reader(path: Path) -> Any:
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=_DECODE_THREADS)
    except Exception as exc:
        raise VideoError(f"{path}: decord cannot read it ({reason(exc)})") from None


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


def _keyframe_of(position: int, keys: list[int], total: int) -> int:
    """The keyframe decord seeks to for a position (its VideoReader::LocateKeyframe)."""
    if not keys or position <= keys[0]:
        return 0
    if position >= total:
        return keys[-1]
    return keys[bisect_right(keys, position) - 1]


def _as_numpy(batch: Any) -> np.ndarray:
    # decord's output type follows its process-wide bridge (torch, mxnet...) which other code
    # may have set; convert rather than touch that global.
    return batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)


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
