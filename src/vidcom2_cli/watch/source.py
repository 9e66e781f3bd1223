"""Reading a live source with PyAV on a thread of its own.

A source is anything FFmpeg reads as live input: a network URL (RTSP, HLS, UDP/RTP MPEG-TS,
HTTP(S), RTMP, SRT, ...), a capture device (``/dev/video0``), ``-`` for stdin, or a file that is
still being written (read as ``tail -f`` reads: a read at its end waits for more until the file
has not grown for ``idle_s``). Frames are sampled at ``fps`` by presentation time and handed to
the chunker through a ``FrameQueue`` of fixed capacity: from a live source (network, device)
the oldest waiting frame is skipped and counted when the chunker falls behind; a file or stdin
simply waits (nothing is lost by reading it later). A network source that drops (an error, or
silence for ``read_timeout_s``) is reopened until it comes back or ``reconnect_s`` pass; its
new presentation times continue the stream's. One that ends cleanly has ended.

Nothing here imports torch: a source that cannot be opened is refused before the model loads.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from ..errors import InputError, first_line

SourceKind = Literal["network", "device", "stdin", "file"]
END_OF_STREAM = "end of stream"
QUEUE_CHUNKS = 2  # a reader's frame queue holds this many chunks' frames
POLL_S = 0.05  # how often a read at a growing file's end looks again
OPEN_MIN_BYTES = 1 << 16  # a growing file is opened once it holds this much (or stops growing)
BACKOFF_S = (0.25, 0.5, 1.0, 2.0)  # waits between reconnection attempts (the last repeats)
# A live source is probed briefly (FFmpeg's defaults read up to 5 s and 5 MB before the first
# frame): a second or 64 KiB finds a video stream's parameters.
LIVE_PROBE = {"analyzeduration": "1000000", "probesize": "65536"}


@dataclass(frozen=True)
class SourceSpec:
    """What the user named as the source, classified."""

    text: str
    kind: SourceKind
    demuxer: str | None = None

    @property
    def live(self) -> bool:
        """Whether the source runs on without us (frames are skipped when we fall behind)."""
        return self.kind in ("network", "device")


@dataclass(frozen=True)
class Frame:
    """One sampled frame: its stream time (seconds from the first frame) and RGB pixels."""

    time_s: float
    image: np.ndarray  # (H, W, 3) uint8


class SourceError(InputError):
    """The source cannot be opened (one line naming it and why)."""


def parse_source(text: str, demuxer: str | None = None) -> SourceSpec:
    """Classify ``text`` without opening it; InputError for a path that is not there or is a
    folder (a URL is only checked by opening it)."""
    if text == "-":
        return SourceSpec(text, "stdin", demuxer)
    if "://" in text and not text.startswith("file://"):
        return SourceSpec(text, "network", demuxer)
    path = Path(text.removeprefix("file://"))
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{text}: no such file, device or URL (a URL names its scheme, as "
                         "rtsp://, udp://, http://)") from None
    except OSError as error:
        raise InputError(f"{text}: cannot be read ({error.strerror})") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{text}: is a folder, not a video source")
    if stat.S_ISCHR(mode):
        return SourceSpec(str(path), "device", demuxer or ("v4l2" if sys.platform.startswith(
            "linux") else None))
    if not os.access(path, os.R_OK):
        raise InputError(f"{text}: cannot be read (permission denied)")
    return SourceSpec(str(path), "file", demuxer)


class FrameQueue:
    """Sampled frames waiting for the chunker, at most ``capacity``.

    ``lossy``: a full queue skips its oldest frame for the new one (counted in ``skipped``);
    otherwise ``put`` waits for room. ``latest_s`` is the stream time of the newest frame read,
    the live edge the chunker's lag is measured from.
    """

    def __init__(self, capacity: int, lossy: bool) -> None:
        if capacity < 1:
            raise ValueError("a frame queue holds at least one frame")
        self.capacity = capacity
        self.lossy = lossy
        self.skipped = 0
        self.latest_s = 0.0
        self._frames: deque[Frame] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self.error: str | None = None

    def put(self, frame: Frame) -> bool:
        """Queue a frame; False once the queue is closed (the reader should stop)."""
        with self._changed:
            while not self.lossy and len(self._frames) >= self.capacity and not self._closed:
                self._changed.wait()
            if self._closed:
                return False
            if len(self._frames) >= self.capacity:
                self._frames.popleft()
                self.skipped += 1
            self._frames.append(frame)
            self.latest_s = max(self.latest_s, frame.time_s)
            self._changed.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Frame | None:
        """The oldest frame; None when the queue is closed and empty, or after ``timeout``
        seconds without one (check ``closed``)."""
        with self._changed:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._frames and not self._closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._changed.wait(left)
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._changed.notify_all()
            return frame

    def close(self, error: str | None = None) -> None:
        """No more frames will come (``error``: why, when the source failed)."""
        with self._changed:
            self._closed = True
            self.error = self.error or error
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        with self._changed:
            return self._closed and not self._frames

    def __len__(self) -> int:
        with self._changed:
            return len(self._frames)


class GrowingFile(io.RawIOBase):
    """A file read as it is written: a read at the end waits (polling) for more, until the
    file has not grown for ``idle_s`` or ``stop`` is set; then it reads as the end. While
    ``waiting`` is False (FFmpeg probing the file when it is opened) a read at the end returns
    at once."""

    def __init__(self, path: str, idle_s: float, stop: threading.Event) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 (closed with this object)
        self.idle_s = idle_s
        self.stop = stop
        self.waiting = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def readinto(self, buffer: Any) -> int:
        last_growth = time.monotonic()
        while True:
            count = self._file.readinto(buffer)
            if count or not self.waiting:
                return count or 0
            if self.stop.is_set() or time.monotonic() - last_growth > self.idle_s:
                return 0
            size = os.fstat(self._file.fileno()).st_size
            if size > self._file.tell():
                last_growth = time.monotonic()
                continue
            time.sleep(POLL_S)

    def close(self) -> None:
        self._file.close()
        super().close()


def wait_for_bytes(path: str, least: int, idle_s: float, stop: threading.Event) -> None:
    """Wait until a growing file holds ``least`` bytes, stops growing, or ``stop`` is set."""
    last_size, last_growth = -1, time.monotonic()
    while not stop.is_set():
        size = os.stat(path).st_size
        if size >= least:
            return
        if size != last_size:
            last_size, last_growth = size, time.monotonic()
        elif time.monotonic() - last_growth > idle_s:
            return
        time.sleep(POLL_S)


class SourceReader:
    """Reads one source on its own thread into a ``FrameQueue``.

    ``start`` returns once the source opened, or raises ``SourceError`` with one line (the
    reader is then finished). Events worth a line (a drop, a reconnection) go to ``on_event``.
    """

    def __init__(self, spec: SourceSpec, fps: float, capacity: int, open_timeout_s: float = 10.0,
                 read_timeout_s: float = 5.0, reconnect_s: float = 30.0, idle_s: float = 5.0,
                 on_event: Callable[[str], None] = lambda _: None,
                 stdin: BinaryIO | None = None) -> None:
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.spec = spec
        self.fps = fps
        self.queue = FrameQueue(capacity, lossy=spec.live)
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.reconnect_s = reconnect_s
        self.idle_s = idle_s
        self.on_event = on_event
        self.stdin = stdin
        self.reconnections = 0
        self.decoded = 0  # frames decoded, sampled or not
        self._stop = threading.Event()
        self._opened = threading.Event()
        self._open_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="vidcom2-watch-source",
                                        daemon=True)
        self._next_s = 0.0
        self._last_s: float | None = None  # stream time of the last frame decoded
        self._dropped_at = 0.0  # when the network source last dropped (monotonic)

    def start(self) -> None:
        """Start reading; raises SourceError when the first open fails."""
        self._thread.start()
        self._opened.wait()
        if self._open_error is not None:
            self._thread.join()
            raise SourceError(self._open_error)

    def stop(self) -> None:
        """Stop reading (the thread ends at its next frame or timeout)."""
        self._stop.set()
        self.queue.close()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # --- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            container = self._open()
        except Exception as error:  # the first open: one line for the user
            reason = _reason(error)
            if reason == "Immediate exit requested":  # PyAV's timeout
                reason = f"nothing received within {self.open_timeout_s:g} s"
            self._open_error = f"{self.spec.text}: cannot be opened ({reason})"
            self.queue.close(self._open_error)
            self._opened.set()
            return
        self._opened.set()
        ended = None
        while not self._stop.is_set():
            ended = self._read(container)
            _close(container)
            # a clean end (a finished HLS playlist, a file served over HTTP) is the stream's
            # end; a failure or silence is a drop, and a dropped network source is reopened
            if self._stop.is_set() or self.spec.kind != "network" or ended == END_OF_STREAM:
                break
            container = self._reconnect(ended)
            if container is None:
                break
        self.queue.close(None if self._stop.is_set() or self.spec.kind != "network"
                         or ended == END_OF_STREAM else
                         f"{self.spec.text}: dropped and did not come back within "
                         f"{self.reconnect_s:g} s ({ended})")

    def _open(self) -> Any:
        import av

        spec = self.spec
        timeout = (self.open_timeout_s, self.read_timeout_s)
        if spec.kind == "stdin":
            return av.open(self.stdin or sys.stdin.buffer, mode="r", format=spec.demuxer,
                           metadata_errors="ignore")
        if spec.kind == "file":
            return self._open_growing()
        return av.open(spec.text, mode="r", format=spec.demuxer, timeout=timeout,
                       options=LIVE_PROBE, metadata_errors="ignore")

    def _open_growing(self) -> Any:
        """Open a file that may still be written: once it holds enough to probe, and again
        while an open fails but the file keeps growing (its first bytes were not enough)."""
        import av

        while True:
            wait_for_bytes(self.spec.text, OPEN_MIN_BYTES, self.idle_s, self._stop)
            size = os.stat(self.spec.text).st_size
            growing = GrowingFile(self.spec.text, self.idle_s, self._stop)
            try:
                container = av.open(growing, mode="r", format=self.spec.demuxer,
                                    metadata_errors="ignore")
            except Exception:
                growing.close()
                if not _grows(self.spec.text, size, self.idle_s, self._stop):
                    raise
                continue
            growing.waiting = True
            return container

    def _read(self, container: Any) -> str:
        """Decode and sample until the source ends or fails; returns why it ended."""
        streams = [s for s in container.streams.video]
        if not streams:
            return "no video stream"
        stream = streams[0]
        first: float | None = None
        base = self._resume_base()
        try:
            for frame in container.decode(stream):
                if self._stop.is_set():
                    return "stopped"
                self.decoded += 1
                seconds = frame.time
                if seconds is None:
                    rate = float(stream.average_rate or self.fps)
                    seconds = self.decoded / rate
                first = seconds if first is None else first
                stream_s = base + max(0.0, seconds - first)
                self._last_s = stream_s
                if stream_s + 1e-6 < self._next_s:
                    continue
                step = 1.0 / self.fps
                self._next_s += step
                if stream_s >= self._next_s:  # after a gap: the next instant on the grid
                    self._next_s = (int(stream_s / step) + 1) * step
                image = frame.to_ndarray(format="rgb24")
                if not self.queue.put(Frame(stream_s, image)):
                    return "stopped"
        except Exception as error:
            reason = _reason(error)
            if reason == "Immediate exit requested":  # PyAV's timeout
                reason = f"silent for {self.read_timeout_s:g} s"
            return reason
        return END_OF_STREAM

    def _resume_base(self) -> float:
        """Where a connection's first frame lands in stream time: 0 for the first, after the
        last frame read (and the time spent away) for a reconnection."""
        if self._last_s is None:
            return 0.0
        away = time.monotonic() - self._dropped_at
        return max(self._next_s, self._last_s + away)

    def _reconnect(self, reason: str) -> Any:
        """Reopen a dropped network source; None when it did not come back in time."""
        self._dropped_at = time.monotonic()
        self.on_event(f"{self.spec.text}: source dropped ({reason}); reconnecting")
        attempt = 0
        while not self._stop.is_set():
            if time.monotonic() - self._dropped_at > self.reconnect_s:
                return None
            try:
                container = self._open()
            except Exception:
                self._stop.wait(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
                attempt += 1
                continue
            self.reconnections += 1
            self.on_event(f"{self.spec.text}: reconnected")
            return container
        return None


def _grows(path: str, size: int, idle_s: float, stop: threading.Event) -> bool:
    """Whether the file grows past ``size`` bytes within ``idle_s`` seconds."""
    deadline = time.monotonic() + idle_s
    while time.monotonic() < deadline and not stop.is_set():
        if os.stat(path).st_size > size:
            return True
        time.sleep(POLL_S)
    return False


def _close(container: Any) -> None:
    with contextlib.suppress(Exception):  # a broken connection may fail to close: gone anyway
        container.close()


def _reason(error: BaseException) -> str:
    """An FFmpeg error as a short reason (PyAV appends the call and file name: dropped)."""
    text = first_line(error)
    return text.split(": '")[0].removeprefix("[Errno ").split("] ")[-1][:200]
