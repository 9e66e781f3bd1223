"""The chunker between a source and a stream's memory, on a thread of its own.

It takes sampled frames from the reader's queue, ``chunk_frames`` at a time, and adds each chunk
to the memory (encode, compress, append to the cache). Lag is how far the last encoded frame is
behind the newest frame read; frames the reader skipped because the chunker fell behind are
counted there, never queued without bound. A stream time limit (``duration_s``) or a wall-clock
deadline ends it, as does the source's end.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .source import Frame, SourceReader

if TYPE_CHECKING:  # the memory imports torch; the chunker's module does not
    from .memory import ChunkReport, StreamMemory


@dataclass(frozen=True)
class ChunkEvent:
    """A chunk added, with the lag right after it."""

    report: ChunkReport
    lag_s: float
    skipped: int  # frames skipped so far


@dataclass(frozen=True)
class WatchSummary:
    """A stream's life, for the closing lines and the benchmark."""

    start_s: float  # the stream's first frame (0)
    end_s: float  # stream time after the last encoded frame
    chunks_seen: int
    frames: int
    encoder_calls: int
    tokens_held: int
    peak_tokens: int
    memory_tokens: int | None
    dropped: int
    recompressed: int
    rebuilds: int
    skipped: int
    reconnections: int
    max_lag_s: float
    answers: int
    ended: str  # why: "end of source", "duration", "until", "stopped", or the source's error

    def lines(self) -> list[str]:
        """The summary as lines of at most 80 columns."""
        budget = "" if self.memory_tokens is None else f" of {self.memory_tokens}"
        return [
            f"watched {clock(self.start_s)}-{clock(self.end_s)}: {self.chunks_seen} chunks, "
            f"{self.frames} frames, {self.encoder_calls} encodes",
            f"ended: {self.ended}",
            f"held {self.tokens_held} tokens (peak {self.peak_tokens}{budget}); "
            f"forgot {self.dropped} chunks, recompressed {self.recompressed}",
            f"frames skipped {self.skipped}; max lag {self.max_lag_s:.1f} s; "
            f"reconnections {self.reconnections}; answers {self.answers}",
        ]


def clock(seconds: float) -> str:
    """Stream time as H:MM:SS (M:SS under an hour)."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Watcher:
    """Runs the chunker on its own thread; ``on_chunk`` is called (on that thread) after each
    chunk, and may ask questions there (``--every``: they see exactly the chunks so far)."""

    def __init__(self, reader: SourceReader, memory: StreamMemory, chunk_frames: int,
                 on_chunk: Callable[[ChunkEvent], None] = lambda _: None,
                 duration_s: float | None = None, deadline: float | None = None) -> None:
        if chunk_frames < 1:
            raise ValueError("a chunk holds at least one frame")
        self.reader = reader
        self.memory = memory
        self.chunk_frames = chunk_frames
        self.on_chunk = on_chunk
        self.duration_s = duration_s
        self.deadline = deadline  # time.time() at which to stop
        self.error: BaseException | None = None
        self.ended = "stopped"
        self.max_lag_s = 0.0
        self.lag_s = 0.0
        self.answers = 0
        self._stop = threading.Event()
        self._done = threading.Event()
        self._pending: Frame | None = None
        self._thread = threading.Thread(target=self._run, name="vidcom2-watch-chunker",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.reader.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the chunker has finished (after at most ``timeout`` seconds)."""
        return self._done.wait(timeout)

    def join(self) -> None:
        self._thread.join()
        self.reader.join(timeout=10)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                frames, ended = self._collect()
                if frames:
                    report = self.memory.add(np.stack([f.image for f in frames]),
                                             [f.time_s for f in frames])
                    self.lag_s = max(0.0, self.reader.queue.latest_s - report.end_s
                                     + 1.0 / self.reader.fps)
                    self.max_lag_s = max(self.max_lag_s, self.lag_s)
                    self.on_chunk(ChunkEvent(report, self.lag_s, self.reader.queue.skipped))
                if ended is not None:
                    self.ended = ended
                    break
        except BaseException as error:  # shown by the main thread
            self.error = error
        finally:
            self.reader.stop()
            self._done.set()

    def _collect(self) -> tuple[list[Frame], str | None]:
        """The next chunk's frames (fewer at the end), and why the stream ends after them."""
        frames: list[Frame] = []
        if self._pending is not None:
            frames.append(self._pending)
            self._pending = None
        while len(frames) < self.chunk_frames:
            if self._stop.is_set():
                return frames, "stopped"
            if self.deadline is not None and time.time() >= self.deadline:
                return frames, "until"
            frame = self.reader.queue.get(timeout=0.1)
            if frame is None:
                if self._stop.is_set():
                    return frames, "stopped"
                if self.reader.queue.closed:
                    return frames, self.reader.queue.error or "end of source"
                continue
            if self.duration_s is not None and frame.time_s >= self.duration_s:
                return frames, "duration"
            if frames and frame.image.shape != frames[0].image.shape:
                self._pending = frame  # the picture size changed: a new chunk starts here
                return frames, None
            frames.append(frame)
        return frames, None

    def summary(self) -> WatchSummary:
        stats = self.memory.stats
        _, end_s = self.memory.time_range()
        return WatchSummary(
            start_s=0.0, end_s=end_s, chunks_seen=stats.chunks_seen,
            frames=stats.frames, encoder_calls=stats.encoder_calls,
            tokens_held=self.memory.tokens_held, peak_tokens=stats.peak_tokens,
            memory_tokens=self.memory.memory_tokens, dropped=stats.dropped,
            recompressed=stats.recompressed, rebuilds=stats.rebuilds,
            skipped=self.reader.queue.skipped, reconnections=self.reader.reconnections,
            max_lag_s=self.max_lag_s, answers=self.answers, ended=self.ended)


def chunk_frames(chunk_s: float, fps: float) -> int:
    """Frames per chunk: ``chunk_s`` seconds at ``fps``, at least one."""
    return max(1, math.ceil(chunk_s * fps - 1e-9))


class Schedule:
    """When ``--every`` asks: each time the encoded stream passes another multiple of
    ``every_s`` (stream time, so the answers do not depend on how fast the machine is)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.next_s = every_s

    def due(self, end_s: float) -> bool:
        if end_s + 1e-9 < self.next_s:
            return False
        self.next_s = (math.floor(end_s / self.every_s + 1e-9) + 1) * self.every_s
        return True
