"""PyAV (FFmpeg 8) decoding: the fallback that reads what FFmpeg reads.

Opening indexes the chosen video stream by demuxing its packets (no decoding): their
presentation timestamps, in display order, are the frames. Packets before the first keyframe
(a transport stream cut mid-GOP) and packets an edit list discards are left out, because no
decoder shows them. Reading seeks to the keyframe before each wanted timestamp and decodes
forward to it (or keeps decoding when the next wanted frame lies in the same group of
pictures). A wanted frame that does not come out of the decoder (a corrupt packet, a
truncated file) is replaced by the nearest frame that does, and reported. Streams without
timestamps (raw H.264/HEVC Annex B) are counted by decoding and read front to back.

Keyframes are what the demuxer and the decoder flag, where they flag any. Where the demuxer
flags no packet (RoQ), the stream is read front to back as a plain decode gives it. Where the
decoder flags no frame (FLIC, QuickTime Animation and RPZA, Sorenson Video, Flash Screen Video,
Microsoft Video 1), the demuxer's keyframes are sought to when they are some of the packets
(an index), and the stream is read front to back when every packet claims to be one (FFmpeg's
RPZA: seeking there gives frames built on missing ones). A stream whose frames change size is
handed out at one size (``same_size``).
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from ..errors import VideoError, first_line
from . import Decoded, display_aspect, make_upright, most_common, orientation, same_size

__all__ = ["Look", "PyAVClip", "look", "open_clip"]

_THREADS = min(4, os.cpu_count() or 1)
_LOOK_PACKETS = 200  # packets read while looking for a first decodable frame
_SEEK_TRIES = 3  # earlier keyframes tried when a seek lands past the wanted frame
# Demuxers whose timestamps after a seek disagree with those of a read from the start (an
# MPEG program stream interpolates the missing ones differently): read these front to back.
_READ_IN_ORDER = {"mpeg", "mpegvideo", "vob"}

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


def _open_container(path: Path, demuxer: str | None = None) -> Any:
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
    container = _open_container(path, demuxer)
    with container:
        stream = _best_video(container)
        if stream is None:
            raise _no_stream(path)
        ctx = stream.codec_context
        size = (ctx.width, ctx.height) if ctx.width > 0 and ctx.height > 0 else None
        matrix, decodable, frame_keys = None, False, False
        for frame in _limited(_frames(container, stream, need_key=False), _LOOK_PACKETS):
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


def _packets(container: Any, stream: Any) -> Iterator[Any]:
    """The stream's packets; a demuxing error (truncated or corrupt data) ends them."""
    try:
        yield from container.demux(stream)
    except av.FFmpegError:
        return


def _frames(container: Any, stream: Any, need_key: bool, frame_keys: bool = True
            ) -> Iterator[Any]:
    """Decoded frames; packets that fail to decode are skipped, and with ``need_key`` so is
    everything before the first keyframe (after a seek, or at the start of a cut stream).

    The keyframe must be one by the decoder's account too (unless ``frame_keys`` is False: a
    decoder that flags none): some demuxers (MPEG program streams) flag predicted pictures as
    keyframes, and decoding from one of those gives frames built on missing references.
    """
    ctx = stream.codec_context
    key_seen = not (need_key and frame_keys)
    for packet in _packets(container, stream):
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


@dataclass(frozen=True)
class _Index:
    """How a stream's frames are found: what ``open_clip`` learnt from its packets."""

    pts: list[int]  # display order; without timestamps the output ordinals
    keys: list[int]  # keyframe pts, increasing
    time_base: Fraction
    rate: float | None  # the container's nominal frame rate
    stamped: bool  # pts are timestamps (else output ordinals)
    in_order: bool  # read by decoding from the start, counting frames
    need_key: bool = True  # decoding starts at a keyframe (False: the demuxer flags none)
    sizes: dict[tuple[int, int], int] | None = None  # (width, height) -> frames, when counted


class PyAVClip:
    """A video stream indexed by its packets' timestamps (or, without any, by decoding)."""

    decoder = "pyav"

    def __init__(self, path: Path, info: Look, index: _Index) -> None:
        self.path = path
        self.codec = info.codec
        self.rotation: int | None = info.rotation
        self.mirrored = info.mirrored
        self.stream_index: int | None = info.stream_index
        self.sample_aspect = info.sample_aspect
        self.frame_sizes = index.sizes
        pts, rate, stamped, time_base = index.pts, index.rate, index.stamped, index.time_base
        self._pts = pts
        self._keys = index.keys
        self._time_base = time_base
        self._stamped = stamped
        self._in_order = index.in_order
        self._need_key = index.need_key
        self._frame_keys = info.frame_keys
        self._demuxer = info.demuxer
        self.frame_count = len(pts)
        self._where = {stamp: i for i, stamp in enumerate(pts)}
        span = float((pts[-1] - pts[0]) * time_base) if len(pts) > 1 else 0.0
        if stamped and span > 0:
            self.fps = (len(pts) - 1) / span
            if rate and abs(rate - self.fps) < 0.01 * rate:
                self.fps = rate  # the container's nominal rate, not its rounded timestamps
        elif rate and rate > 0:
            self.fps = rate
        else:
            self.fps = 25.0  # a raw stream with no rate at all: FFmpeg's own assumption

    def timestamps(self) -> np.ndarray:
        if not self._stamped:
            return np.arange(self.frame_count) / self.fps
        start = self._pts[0]
        return np.array([float((p - start) * self._time_base) for p in self._pts])

    def read(self, indices: list[int]) -> Decoded:
        wanted = sorted(set(indices))
        container = _open_container(self.path, self._demuxer)
        with container:
            stream = container.streams[self.stream_index]
            stream.codec_context.thread_count = _THREADS
            if self._in_order:
                got, used = self._read_in_order(container, stream, wanted)
            else:
                got, used = _Seeker(self, container, stream).read(wanted)
        if not got:
            raise VideoError(f"{self.path}: holds no decodable frames (every frame failed to "
                             "decode)")
        common = None
        if self.frame_sizes:  # every frame's size is known: the stream's most common one
            width, height = most_common(
                [size for size, count in self.frame_sizes.items() for _ in range(count)])
            common = (height, width)
        frames, resized = same_size([got[i] for i in indices], common)
        frames = make_upright(frames, self.rotation or 0, self.mirrored)
        frames = display_aspect(frames, self.sample_aspect)
        return Decoded(frames, {i: used[i] for i in indices if used[i] != i}, resized)

    def _read_in_order(self, container: Any, stream: Any, wanted: list[int]
                       ) -> tuple[dict[int, np.ndarray], dict[int, int]]:
        got: dict[int, np.ndarray] = {}
        todo = set(wanted)
        last = None
        frames = _frames(container, stream, self._need_key, self._frame_keys)
        for ordinal, frame in enumerate(frames):
            if ordinal in todo:
                got[ordinal] = _rgb(frame)
                todo.discard(ordinal)
                if not todo:
                    break
            last = (ordinal, frame)
        used = {i: i for i in got}
        if todo and last is not None:  # fewer frames came out this time: use the last one
            image = _rgb(last[1])
            for i in todo:
                got[i], used[i] = image, last[0]
        return got, used


class _Seeker:
    """Decodes wanted frames in increasing order, seeking only across keyframes."""

    def __init__(self, clip: PyAVClip, container: Any, stream: Any) -> None:
        self.clip, self.container, self.stream = clip, container, stream
        self.frames: Iterator[Any] | None = None
        self.held: Any = None  # a decoded frame not consumed yet
        self.position: int | None = None  # pts of the last frame taken from the decoder

    def read(self, wanted: list[int]) -> tuple[dict[int, np.ndarray], dict[int, int]]:
        got: dict[int, np.ndarray] = {}
        used: dict[int, int] = {}
        for index in wanted:
            found = self._frame_at(self.clip._pts[index])
            if found is None:
                continue
            stamp, frame = found
            got[index] = _rgb(frame)
            used[index] = self.clip._where.get(stamp, index)
        if got:  # a wanted frame past every decodable one: the nearest decodable
            for index in wanted:
                if index not in got:
                    nearest = min(got, key=lambda i: (abs(i - index), i))
                    got[index], used[index] = got[nearest], used[nearest]
        return got, used

    def _key_before(self, target: int) -> int | None:
        keys = self.clip._keys
        at = bisect_right(keys, target) - 1
        return keys[at] if at >= 0 else None

    def _next(self) -> Any:
        if self.held is not None:
            frame, self.held = self.held, None
            return frame
        assert self.frames is not None
        frame = next(self.frames, None)
        if frame is not None:
            self.position = _stamp(frame)
        return frame

    def _start(self, key: int | None) -> None:
        """Decode from the keyframe ``key`` (None: from the start of the file)."""
        self.held = None
        self.position = None
        if key is None:
            self.container.seek(0, backward=True, any_frame=False)  # whole-file seek
        else:
            self.container.seek(key, stream=self.stream, backward=True, any_frame=False)
        self.stream.codec_context.flush_buffers()
        self.frames = _frames(self.container, self.stream, need_key=True,
                              frame_keys=self.clip._frame_keys)

    def _frame_at(self, target: int) -> tuple[int, Any] | None:
        key = self._key_before(target)
        if not self._can_continue(target, key) and not self._seek_before(target, key):
            return None
        before = None
        while True:
            frame = self._next()
            if frame is None:
                break
            stamp = _stamp(frame)
            if stamp is None:
                continue
            if stamp < target:
                before = frame
                continue
            if stamp == target:
                return stamp, frame
            self.held = frame  # past the target: it never came out
            if before is None or stamp - target < target - _stamp(before):
                return stamp, frame
            return _stamp(before), before
        return (_stamp(before), before) if before is not None else None

    def _can_continue(self, target: int, key: int | None) -> bool:
        if self.frames is None:
            return False
        position = _stamp(self.held) if self.held is not None else self.position
        if position is None:
            return False
        return position <= target and (key is None or key <= position)

    def _seek_before(self, target: int, key: int | None) -> bool:
        """Seek so that the decoder's first frame is at or before ``target``; after a few
        keyframes that land too late, decode from the start of the file."""
        keys = self.clip._keys
        tries = [k for k in keys[: bisect_right(keys, target)]][-_SEEK_TRIES:][::-1]
        for candidate in [*tries, None] if key is not None else [None]:
            try:
                self._start(candidate)
            except av.FFmpegError:
                continue
            frame = self._next()
            if frame is None:
                continue
            self.held = frame
            stamp = _stamp(frame)
            if candidate is None or (stamp is not None and stamp <= target):
                return True
        return self.held is not None


def _stamp(frame: Any) -> int | None:
    return frame.pts if frame.pts is not None else frame.dts


def _rgb(frame: Any) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def open_clip(path: Path, info: Look | None = None) -> PyAVClip:
    """Index a file's video stream with PyAV; VideoError when no frame would decode."""
    info = info or look(path)
    if not info.decodable:
        raise VideoError(f"{path}: holds no decodable frames (frame data missing or corrupt)")
    container = _open_container(path, info.demuxer)
    with container:
        stream = container.streams[info.stream_index]
        time_base = stream.time_base or Fraction(1, 90000)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        rate_f = float(rate) if rate else None
        stamps: list[tuple[int | None, bool]] = []  # (pts, keyframe) of each packet
        keyed = missing = False
        for packet in _packets(container, stream):
            if packet.size == 0 or packet.is_discard:
                continue
            keyed = keyed or bool(packet.is_keyframe)
            if packet.pts is None and keyed:
                missing = True
                break
            stamps.append((packet.pts, bool(packet.is_keyframe)))
    # A cut stream: frames before its first keyframe never show. A demuxer that flags no
    # keyframe at all (RoQ): every packet, decoded from the start as a player would.
    first = next((i for i, (_, key) in enumerate(stamps) if key), 0)
    if missing or any(stamp is None for stamp, _ in stamps[first:]):
        return _counted(path, info, rate_f)
    if not stamps:
        raise VideoError(f"{path}: holds no decodable frames (no video packets)")
    pts = sorted({int(stamp) for stamp, _ in stamps[first:] if stamp is not None})
    keys = sorted(int(stamp) for stamp, key in stamps[first:] if key and stamp is not None)
    # Where the decoder flags no key frame, the demuxer's keyframes are all there is to seek
    # to: trusted where they are some packets (an index: QuickTime Animation's sync samples),
    # not where every packet claims to be one (FFmpeg's RPZA encoder writes deltas so).
    unchecked = not info.frame_keys and all(key for _, key in stamps[first:])
    return PyAVClip(path, info, _Index(
        pts, keys or pts[:1], Fraction(time_base), rate_f, stamped=True,
        in_order=info.format in _READ_IN_ORDER or not keyed or unchecked, need_key=keyed))


def _counted(path: Path, info: Look, rate: float | None) -> PyAVClip:
    """A stream without timestamps, its frames counted (and their sizes noted) by decoding:
    from its first keyframe, or from its first packet where nothing is flagged a keyframe."""
    need_key = True
    sizes = _sizes_by_decoding(path, info, need_key)
    if not sizes:
        need_key = False
        sizes = _sizes_by_decoding(path, info, need_key)
    count = sum(sizes.values())
    if count == 0:
        raise VideoError(f"{path}: holds no decodable frames (frame data missing or corrupt)")
    return PyAVClip(path, info, _Index(list(range(count)), [0], Fraction(1), rate,
                                       stamped=False, in_order=True, need_key=need_key,
                                       sizes=sizes))


def _sizes_by_decoding(path: Path, info: Look, need_key: bool) -> dict[tuple[int, int], int]:
    """Frames per (width, height), in order of first appearance, of a whole decode."""
    sizes: dict[tuple[int, int], int] = {}
    container = _open_container(path, info.demuxer)
    with container:
        stream = container.streams[info.stream_index]
        stream.codec_context.thread_count = _THREADS
        for frame in _frames(container, stream, need_key, info.frame_keys):
            size = (frame.width, frame.height)
            sizes[size] = sizes.get(size, 0) + 1
    return sizes
