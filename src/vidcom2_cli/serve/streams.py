"""Live streams watched by the server (``vidcom2 serve --watch NAME=SOURCE``).

The operator names each stream when the server starts; a request asks about one with the video
URL ``stream://NAME`` and is answered about what the stream holds at that moment. Clients can
never make the server open a source. Each stream is ``vidcom2 watch``'s reader, chunker and
memory; the one engine is shared with the request batches through ``engine_lock``, which the
chunkers (encoding a chunk), the stream questions and the scheduler's batches all take, so that
the model is never used by two of them at once.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..catalog import DEFAULT_CHUNK_S, DEFAULT_FORGET, DEFAULT_MEMORY_TOKENS, DEFAULT_WATCH_FPS
from ..errors import InputError
from .protocol import APIError

if TYPE_CHECKING:
    from ..engine import Engine
    from ..models.base import PixelBounds
    from ..options import CompressionOptions, GenerationOptions
    from ..watch.memory import StreamAnswer, StreamMemory
    from ..watch.session import Watcher
    from ..watch.source import SourceReader, SourceSpec

log = logging.getLogger("vidcom2.serve")
SCHEME = "stream://"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class WatchSettings:
    """How every served stream is sampled, chunked and held (watch's options)."""

    fps: float = DEFAULT_WATCH_FPS
    chunk_s: float = DEFAULT_CHUNK_S
    memory_tokens: int = DEFAULT_MEMORY_TOKENS  # 0: no bound
    forget: str = DEFAULT_FORGET


def parse_watch(values: list[str]) -> list[tuple[str, SourceSpec]]:
    """``--watch NAME=SOURCE`` values as (name, source); ValueError with the problem (one
    line, naming the value)."""
    from ..watch.source import parse_source

    streams: list[tuple[str, SourceSpec]] = []
    for value in values:
        name, equals, source = value.partition("=")
        if not equals or not source:
            raise ValueError(f"--watch: expected NAME=SOURCE, got {value!r}")
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"--watch: stream name {name!r} must be 1-64 letters, digits, "
                             "'_', '.' or '-' (starting with a letter or digit)")
        if any(name == seen for seen, _ in streams):
            raise ValueError(f"--watch: stream name {name!r} is given twice")
        if source == "-":
            raise ValueError(f"--watch {name}: stdin cannot be a served stream's source")
        try:
            streams.append((name, parse_source(source)))
        except InputError as error:
            raise ValueError(f"--watch {name}: {error}") from None
    return streams


def stream_name(url: str) -> str | None:
    """The stream a video URL names (``stream://NAME``), or None for any other URL."""
    return url[len(SCHEME):] if url.startswith(SCHEME) else None


class ServedStream:
    """One named stream: its reader, memory and chunker."""

    def __init__(self, name: str, reader: SourceReader, memory: StreamMemory,
                 chunk_frames: int) -> None:
        from ..watch.session import Watcher

        self.name = name
        self.reader = reader
        self.memory = memory
        self.watcher: Watcher = Watcher(reader, memory, chunk_frames)

    def state(self) -> dict[str, Any]:
        """What GET /v1/streams shows of it (never the source, which may hold a password)."""
        memory, watcher = self.memory, self.watcher
        start_s, end_s = memory.time_range()
        done = watcher.wait(0)
        status = ("failed" if watcher.error is not None else "ended" if done
                  else "watching" if memory.chunks else "waiting")
        return {"id": self.name, "object": "stream", "status": status,
                "ended": watcher.ended if done else None,
                "start_s": round(start_s, 3), "end_s": round(end_s, 3),
                "chunks_held": len(memory.chunks), "chunks_seen": memory.stats.chunks_seen,
                "tokens_held": memory.tokens_held, "memory_tokens": memory.memory_tokens,
                "lag_s": round(watcher.lag_s, 3), "frames_skipped": self.reader.queue.skipped,
                "reconnections": self.reader.reconnections}


class Streams:
    """The server's streams, by name. ``open_sources`` opens every source (before the model
    loads: a source that cannot be opened is one line at start); ``attach`` gives them the
    engine; the app's lifespan calls ``start`` and ``stop``."""

    def __init__(self, specs: list[tuple[str, SourceSpec]], settings: WatchSettings) -> None:
        self.specs = specs
        self.settings = settings
        self.readers: dict[str, SourceReader] = {}
        self.streams: dict[str, ServedStream] = {}
        self.engine_lock = threading.Lock()
        self.started = False

    @property
    def chunk_frames(self) -> int:
        from ..watch.session import chunk_frames

        return chunk_frames(self.settings.chunk_s, self.settings.fps)

    def open_sources(self) -> None:
        """Open every source (InputError naming the stream when one cannot be opened)."""
        from ..watch.source import QUEUE_CHUNKS, SourceError, SourceReader

        for name, spec in self.specs:
            reader = SourceReader(spec, self.settings.fps,
                                  capacity=QUEUE_CHUNKS * self.chunk_frames,
                                  on_event=lambda line, name=name: log.info("stream %s: %s",
                                                                            name, line))
            try:
                reader.start()
            except SourceError as error:
                self.stop()
                raise InputError(f"--watch {name}: {error}") from None
            self.readers[name] = reader

    def attach(self, engine: Engine, compression: CompressionOptions,
               bounds: PixelBounds | None) -> None:
        """A memory per stream on ``engine`` (InputError when the method cannot compress a
        stream's chunks before the question)."""
        from ..watch.memory import StreamMemory

        forget = "oldest" if self.settings.forget == "oldest" else "compress"
        for name, reader in self.readers.items():
            memory = StreamMemory(engine, compression, self.settings.fps,
                                  self.settings.memory_tokens or None, forget, bounds,
                                  lock=self.engine_lock)
            self.streams[name] = ServedStream(name, reader, memory, self.chunk_frames)

    def start(self) -> None:
        self.started = True
        for stream in self.streams.values():
            stream.watcher.start()

    def stop(self) -> None:
        """Stop every reader and chunker (a chunk being encoded is finished first)."""
        for reader in self.readers.values():
            reader.stop()
        for stream in self.streams.values():
            stream.watcher.stop()
        if self.started:
            for stream in self.streams.values():
                stream.watcher.join()
        for reader in self.readers.values():
            reader.join(timeout=10)

    def get(self, name: str, param: str) -> ServedStream:
        stream = self.streams.get(name)
        if stream is None:
            served = ", ".join(sorted(self.streams)) or "none"
            raise APIError(404, f"{param}: no stream {name!r} is watched here (streams: "
                           f"{served}; see GET /v1/streams)", param, "stream_not_found")
        return stream

    def ask(self, stream: ServedStream, question: str, generation: GenerationOptions
            ) -> tuple[StreamAnswer, dict[str, Any]]:
        """The answer about what ``stream`` holds now, and the response's ``vidcom2`` field
        (watch's JSON line figures plus OpenAI's token counts). 503 with Retry-After while
        nothing of it is encoded."""
        if not stream.memory.chunks:
            raise _no_chunk_yet(stream)
        try:
            answer = stream.memory.ask(question, generation)
        except InputError as error:
            if not stream.memory.chunks:
                raise _no_chunk_yet(stream) from None
            raise APIError(400, f"messages: {error}", "messages") from None
        stream.watcher.answers += 1
        return answer, answer_fields(stream, answer)


def answer_fields(stream: ServedStream, answer: StreamAnswer) -> dict[str, Any]:
    """A stream answer's statistics, with the keys of ``vidcom2 watch``'s JSON lines."""
    return {"stream": stream.name, "start_s": round(answer.start_s, 3),
            "end_s": round(answer.end_s, 3), "chunks_held": answer.chunks_held,
            "chunks_seen": answer.chunks_seen, "tokens_held": answer.tokens_held,
            "lag_s": round(stream.watcher.lag_s, 3),
            "frames_skipped": stream.reader.queue.skipped,
            "latency_ms": round(answer.latency_ms, 1), "generated": answer.generated,
            "tokens": {"prompt_kept": answer.prompt_tokens, "generated": answer.generated,
                       "prefix_reused": answer.tokens_held}}


def _no_chunk_yet(stream: ServedStream) -> APIError:
    if stream.watcher.wait(0):
        return APIError(503, f"stream {stream.name!r} ended before a chunk was encoded "
                        f"({stream.watcher.ended})", code="stream_empty")
    return APIError(503, f"stream {stream.name!r}: no chunk is encoded yet; retry in about "
                    f"{RETRY_AFTER_S} s", code="stream_not_ready",
                    headers={"Retry-After": str(RETRY_AFTER_S)})
