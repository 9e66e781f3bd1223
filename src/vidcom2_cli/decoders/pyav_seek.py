"""Reading chosen frames of a timestamped stream by seeking: the PyAV reader's random access.

Wanted frames are decoded in increasing order; the decoder seeks to the keyframe before a
wanted timestamp only when it cannot simply decode on to it (the next wanted frame in the
same group of pictures). A seek that lands past the target is retried from a few earlier
keyframes, then from the start of the file.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from typing import Any

import av
import numpy as np

from .pyav_look import decoded_frames, rgb

_SEEK_TRIES = 3  # earlier keyframes tried when a seek lands past the wanted frame


class FrameSeeker:
    """Decodes wanted frames in increasing order, seeking only across keyframes."""

    def __init__(self, container: Any, stream: Any, pts: list[int], keys: list[int],
                 frame_keys: bool) -> None:
        self.container, self.stream = container, stream
        self.pts = pts  # the stream's frames, display order
        self.where = {stamp: index for index, stamp in enumerate(pts)}
        self.keys = keys  # keyframe pts, increasing
        self.frame_keys = frame_keys  # the decoder flags key frames (see decoded_frames)
        self.frames: Iterator[Any] | None = None
        self.held: Any = None  # a decoded frame not consumed yet
        self.position: int | None = None  # pts of the last frame taken from the decoder

    def read(self, wanted: list[int]) -> tuple[dict[int, np.ndarray], dict[int, int]]:
        got: dict[int, np.ndarray] = {}
        used: dict[int, int] = {}
        for index in wanted:
            found = self._frame_at(self.pts[index])
            if found is None:
                continue
            stamp, frame = found
            got[index] = rgb(frame)
            used[index] = self.where.get(stamp, index)
        if got:  # a wanted frame past every decodable one: the nearest decodable
            for index in wanted:
                if index not in got:
                    nearest = min(got, key=lambda i: (abs(i - index), i))
                    got[index], used[index] = got[nearest], used[nearest]
        return got, used

    def _key_before(self, target: int) -> int | None:
        keys = self.keys
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
        self.frames = decoded_frames(self.container, self.stream, need_key=True,
                              frame_keys=self.frame_keys)

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
        keys = self.keys
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
