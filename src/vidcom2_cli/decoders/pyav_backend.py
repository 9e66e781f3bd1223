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

This module indexes a stream and reads frames from it; ``pyav_look`` opens files and yields
packets and frames, ``pyav_seek`` finds wanted frames by seeking.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VideoError
from . import Decoded, display_aspect, make_upright, most_common, same_size
from .pyav_look import (
    DECODE_THREADS,
    Look,
    decoded_frames,
    look,
    open_container,
    rgb,
    stream_packets,
)
from .pyav_seek import FrameSeeker

__all__ = ["PyAVClip", "open_clip"]

# Demuxers whose timestamps after a seek disagree with those of a read from the start (an
# MPEG program stream interpolates the missing ones differently): read these front to back.
_READ_IN_ORDER = {"mpeg", "mpegvideo", "vob"}


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
        container = open_container(self.path, self._demuxer)
        with container:
            stream = container.streams[self.stream_index]
            stream.codec_context.thread_count = DECODE_THREADS
            if self._in_order:
                got, used = self._read_in_order(container, stream, wanted)
            else:
                got, used = FrameSeeker(container, stream, self._pts, self._keys,
                                         self._frame_keys).read(wanted)
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
        frames = decoded_frames(container, stream, self._need_key, self._frame_keys)
        for ordinal, frame in enumerate(frames):
            if ordinal in todo:
                got[ordinal] = rgb(frame)
                todo.discard(ordinal)
                if not todo:
                    break
            last = (ordinal, frame)
        used = {i: i for i in got}
        if todo and last is not None:  # fewer frames came out this time: use the last one
            image = rgb(last[1])
            for i in todo:
                got[i], used[i] = image, last[0]
        return got, used


def open_clip(path: Path, info: Look | None = None) -> PyAVClip:
    """Index a file's video stream with PyAV; VideoError when no frame would decode."""
    info = info or look(path)
    if not info.decodable:
        raise VideoError(f"{path}: holds no decodable frames (frame data missing or corrupt)")
    container = open_container(path, info.demuxer)
    with container:
        stream = container.streams[info.stream_index]
        time_base = stream.time_base or Fraction(1, 90000)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        rate_f = float(rate) if rate else None
        stamps: list[tuple[int | None, bool]] = []  # (pts, keyframe) of each packet
        keyed = missing = False
        for packet in stream_packets(container, stream):
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
    container = open_container(path, info.demuxer)
    with container:
        stream = container.streams[info.stream_index]
        stream.codec_context.thread_count = DECODE_THREADS
        for frame in decoded_frames(container, stream, need_key, info.frame_keys):
            size = (frame.width, frame.height)
            sizes[size] = sizes.get(size, 0) + 1
    return sizes
