"""FFmpeg's view of a file through PyAV: the video stream chosen, a first look at it, its
packets and decoded frames.

``look`` opens a file and decodes at most a first frame (what ``video.probe`` and the decoder
choice need); ``stream_packets`` and ``decoded_frames`` are what the PyAV reader
(``pyav_backend``) and its seeker (``pyav_seek``) decode with. Packets and frames that fail
are skipped here, so that a corrupt stretch never ends a read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from ..errors import VideoError, first_line
from . import orientation

DECODE_THREADS = min(4, os.cpu_count() or 1)
_LOOK_PACKETS = 200  # packets read while looking for a first decodable frame

av.logging.set_level(None)  # FFmpeg's own log lines never reach stderr through PyAV


@dataclass(frozen=True)
class Look:
    """What FFmpeg says about a file without decoding more than one frame."""

    format: str  # demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "mpegts"
    stream_index: int
    codec: str
    pix_fmt: str | None
    coded_size: tuple[int, int] | None
    rotation: int  # clockwise, from the display matrix
    mirrored: bool
    sample_aspect: Fraction | None
    decodable: bool  # a first frame decoded
    video_streams: int  # video streams besides cover pictures
    # The decoder flags key frames (most do; FLIC, QuickTime Animation and a few other old
    # codecs flag none, and then the stream is read front to back).
    frame_keys: bool = True
    # The demuxer named to FFmpeg, where the file's name would mislead its choice (a Motion
    # JPEG stream named .jpg is otherwise read as one image); None: FFmpeg's own choice.
    demuxer: str | None = None


def _videos(container: Any) -> list[Any]:
    return [s for s in container.streams.video
            if not (s.disposition & av.stream.Disposition.attached_pic)]


def _best_video(container: Any) -> Any:
    """The video stream with the largest pictures (a thumbnail or preview track loses to the
    main one); among equals, the one FFmpeg would pick. Never an attached cover picture."""
    videos = _videos(container)
    if not videos:
        return None
    best = container.streams.best("video")

    def rank(stream: Any) -> tuple[int, bool]:
        ctx = stream.codec_context
        return max(ctx.width, 0) * max(ctx.height, 0), stream is best

    return max(videos, key=rank)


def open_container(path: Path, demuxer: str | None = None) -> Any:
    try:
        return av.open(str(path), format=demuxer, metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise VideoError(
            f"{path}: not a readable video (unknown format, or a corrupt/truncated file: "
            f"{_reason(exc)})"
        ) from None


def _reason(exc: BaseException) -> str:
    text = first_line(exc)
    # PyAV appends the call and file name ("...: 'avformat_open_input(...)'"): drop it.
    return text.split(": '")[0].removeprefix("[Errno ").split("] ")[-1][:200]


def _no_stream(path: Path) -> VideoError:
    return VideoError(f"{path}: no video stream (audio-only, or a video stream without frames)")


def _sample_aspect(stream: Any) -> Fraction | None:
    for value in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if value:
            return Fraction(value)
    return None


def _matrix(frame: Any) -> bytes | None:
    try:
        for item in frame.side_data:
            if "DISPLAYMATRIX" in str(getattr(item, "type", "")):
                return bytes(item)
    except Exception:
        return None
    return None


def look(path: Path, demuxer: str | None = None) -> Look:
    """Open the file with FFmpeg (with ``demuxer``, or the one FFmpeg picks), pick the video
    stream and decode its first frame."""
    container = open_container(path, demuxer)
    with container:
        stream = _best_video(container)
        if stream is None:
            raise _no_stream(path)
        ctx = stream.codec_context
        size = (ctx.width, ctx.height) if ctx.width > 0 and ctx.height > 0 else None
        matrix, decodable, frame_keys = None, False, False
        first_frames = decoded_frames(container, stream, need_key=False)
        for frame in _limited(first_frames, _LOOK_PACKETS):
            if not decodable:
                matrix, decodable = _matrix(frame), True
            if frame.key_frame:  # the usual case: the first frame, and the look ends there
                frame_keys = True
                break
        rotation, mirrored = orientation(matrix)
        return Look(
            format=container.format.name,
            stream_index=stream.index,
            codec=getattr(ctx.codec, "canonical_name", None) or ctx.name,
            pix_fmt=ctx.pix_fmt,
            coded_size=size,
            rotation=rotation,
            mirrored=mirrored,
            sample_aspect=_sample_aspect(stream),
            decodable=decodable,
            video_streams=len(_videos(container)),
            frame_keys=frame_keys or not decodable,
            demuxer=demuxer,
        )


def _limited(frames: Iterator[Any], limit: int) -> Iterator[Any]:
    for count, frame in enumerate(frames):
        if count >= limit:
            return
        yield frame


def stream_packets(container: Any, stream: Any) -> Iterator[Any]:
    """The stream's packets; a demuxing error (truncated or corrupt data) ends them."""
    try:
        yield from container.demux(stream)
    except av.FFmpegError:
        return


def decoded_frames(container: Any, stream: Any, need_key: bool, frame_keys: bool = True
                   ) -> Iterator[Any]:
    """Decoded frames; packets that fail to decode are skipped, and with ``need_key`` so is
    everything before the first keyframe (after a seek, or at the start of a cut stream).

    The keyframe must be one by the decoder's account too (unless ``frame_keys`` is False: a
    decoder that flags none): some demuxers (MPEG program streams) flag predicted pictures as
    keyframes, and decoding from one of those gives frames built on missing references.
    """
    ctx = stream.codec_context
    key_seen = not (need_key and frame_keys)
    for packet in stream_packets(container, stream):
        if packet.size == 0:
            break  # the demuxer's flush packet: drained below
        if packet.is_discard:
            continue
        if need_key:
            if not packet.is_keyframe:
                continue
            need_key = False
        try:
            decoded = ctx.decode(packet)
        except av.FFmpegError:
            continue
        for frame in decoded:
            key_seen = key_seen or bool(frame.key_frame)
            if key_seen and not frame.is_corrupt:
                yield frame
    try:
        drained = ctx.decode(None)
    except av.FFmpegError:
        return
    for frame in drained:
        key_seen = key_seen or bool(frame.key_frame)
        if key_seen and not frame.is_corrupt:
            yield frame


def rgb(frame: Any) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")
