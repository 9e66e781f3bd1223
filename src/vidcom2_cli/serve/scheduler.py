"""Requests into engine batches, and compressed prefixes kept between requests.

Admission (``Scheduler.submit``, on the event loop) refuses a request when the queue is full,
and decodes and preprocesses its video on a small thread pool unless its compressed prefix is
cached already (requests for the same new video share one decode). One engine thread then
takes what is queued, waiting a few milliseconds for a batch to fill (``max_batch``):

1. requests are grouped by context key (the video's content and every setting that changes
   the prompt prefix); a group whose prefix is in the LRU cache needs no encoding at all;
2. the new videos are encoded and compressed, and their prefixes prefilled together in one
   batch, which the cache then keeps (bounded in bytes, least recently used out);
3. the questions on one cached prefill with the same generation settings are answered in one
   generate call, each streaming its own text and stopping on its own (a client gone, a time
   limit) while the others go on. A sampled request runs alone, so that its seed gives what
   ``ask --sample --seed`` gives.

The engine is only ever called from the engine thread (and ``prepare``, which the engine
allows on other threads).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..encoding import sampling_key
from ..engine import Engine
from ..errors import InputError, VideoError, first_line
from ..feature_cache import file_digest
from ..models.conversation import head_key
from ..options import GenerationOptions
from ..timing import is_out_of_memory, release_cached_memory, reset_peak_memory
from ..work import Answer, PreparedRequest, Request, VideoContext
from .media import LocalVideo
from .metrics import ServerMetrics
from .prefix_cache import PrefixEntry, PrefixLRU, held_bytes
from .protocol import APIError, ChatRequest, from_input_error

log = logging.getLogger("vidcom2.serve")


class Cancelled(Exception):
    """The client went away; nobody reads the result."""


@dataclass
class JobResult:
    answer: Answer
    queue_s: float  # from admission to the engine picking the request up
    batch_size: int  # requests answered by the same generate call
    prefix_cached: bool  # the compressed prefix came from the cache (no decode, no encoder)


@dataclass
class Job:
    """One admitted request on its way through the engine."""

    request: ChatRequest
    video: LocalVideo
    key: str
    deadline: float  # time.monotonic()
    on_text: Callable[[str], None] | None = None  # called on the engine thread
    prepared: PreparedRequest | None = None
    arrived: float = field(default_factory=time.monotonic)
    started: float | None = None
    streamed: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: Future[JobResult] = field(default_factory=Future)

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() > self.deadline

    def text(self, text: str) -> None:
        self.streamed = True
        if self.on_text is not None and not self.cancelled.is_set():
            self.on_text(text)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class Scheduler:
    """The queue in front of one engine (see the module's docstring)."""

    def __init__(self, engine: Engine, metrics: ServerMetrics, max_batch: int = 8,
                 max_queue: int = 64, batch_wait_s: float = 0.005,
                 prefix_cache_bytes: int = 1 << 30, prepare_workers: int = 2,
                 engine_lock: threading.Lock | None = None) -> None:
        self.engine = engine
        # held for each batch: whoever else uses the engine (a served stream) takes it too
        self.engine_lock = engine_lock or threading.Lock()
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s
        self.cache = PrefixLRU(prefix_cache_bytes, metrics)
        self.queue: deque[Job] = deque()
        self.waiting = 0  # admitted, not yet picked up by the engine thread
        self.condition = threading.Condition()
        self.stopping = False
        self.pool = ThreadPoolExecutor(max_workers=prepare_workers,
                                       thread_name_prefix="vidcom2-prepare")
        self.preparing: dict[str, Future[PreparedRequest]] = {}
        self.digests: dict[tuple[str, int, int], str] = {}
        self.thread = threading.Thread(target=self._loop, name="vidcom2-engine", daemon=True)
        self.seconds_per_request = 1.0  # a running estimate, for Retry-After

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Let the engine thread finish what it holds, then end it."""
        with self.condition:
            self.stopping = True
            self.condition.notify_all()
        self.thread.join()
        self.pool.shutdown(wait=True, cancel_futures=True)

    # --- admission (event loop) --------------------------------------------------------------

    async def submit(self, request: ChatRequest, video: LocalVideo, deadline: float,
                     on_text: Callable[[str], None] | None = None) -> Job:
        """Queue a request (APIError 503 when the queue is full), after decoding its video
        unless its prefix is cached. Errors in the video are raised here, as 4xx."""
        with self.condition:
            if self.stopping:
                raise APIError(503, "the server is shutting down", code="shutting_down")
            if self.waiting >= self.max_queue:
                retry = max(1, round(self.seconds_per_request * (self.waiting + 1)
                                     / self.max_batch))
                raise APIError(503, f"the queue is full ({self.max_queue} requests waiting); "
                               f"retry in about {retry} s", code="queue_full",
                               headers={"Retry-After": str(retry)})
            self.waiting += 1
            self.metrics.queue_length.set(self.waiting)
        try:
            key = await asyncio.get_running_loop().run_in_executor(
                self.pool, self.context_key, request, video.path)
            job = Job(request, video, key, deadline, on_text)
            if key not in self.cache:
                job.prepared = await asyncio.wrap_future(self._prepare(job))
        except BaseException:
            self._unadmit()
            raise
        with self.condition:
            self.queue.append(job)
            self.condition.notify_all()
        return job

    def _unadmit(self) -> None:
        with self.condition:
            self.waiting -= 1
            self.metrics.queue_length.set(self.waiting)

    def context_key(self, request: ChatRequest, path: Path) -> str:
        """What makes two requests share a compressed prompt prefix: the video's bytes, the
        sampling, the compression and the messages before the video."""
        stat = path.stat()
        identity = (str(path), stat.st_size, stat.st_mtime_ns)
        if identity not in self.digests:
            if len(self.digests) > 10_000:
                self.digests.clear()
            self.digests[identity] = file_digest(path)
        parts = (self.digests[identity], repr(request.sampling), repr(request.compression),
                 sampling_key(request.sampling, self.engine.adapter.frames_multiple),
                 head_key(request.question))
        return hashlib.sha256("\x00".join(parts).encode()).hexdigest()

    def _prepare(self, job: Job) -> Future[PreparedRequest]:
        """One decode per key at a time: later requests for the same new video share it."""
        with self.condition:
            running = self.preparing.get(job.key)
            if running is not None:
                return running
            future = self.pool.submit(self._prepare_now, job)
            self.preparing[job.key] = future
        future.add_done_callback(lambda _: self._prepared(job.key))
        return future

    def _prepared(self, key: str) -> None:
        with self.condition:
            self.preparing.pop(key, None)

    def _prepare_now(self, job: Job) -> PreparedRequest:
        request = job.request
        try:
            prepared = self.engine.prepare(Request(str(job.video.path), request.question),
                                           request.sampling)
        except (InputError, VideoError) as error:
            raise from_input_error(error, str(job.video.path), request.video_param) from None
        if prepared.feature_cache is not None:
            self.metrics.feature_cache.labels(prepared.feature_cache).inc()
        return prepared

    # --- the engine thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            started = time.monotonic()
            try:
                with self.engine_lock:
                    self._run(jobs)
            except Exception as error:  # a bug: the requests fail, the server goes on
                log.exception("engine batch failed")
                for job in jobs:
                    job.fail(APIError(500, f"internal error: {type(error).__name__}: "
                                      f"{first_line(error)}", code="internal_error"))
            elapsed = time.monotonic() - started
            self.seconds_per_request = 0.8 * self.seconds_per_request + 0.2 * elapsed

    def _take(self) -> list[Job] | None:
        """The next batch: what is queued, waiting up to ``batch_wait_s`` after the first
        request for more (at most ``max_batch``); None once stopping and empty."""
        with self.condition:
            while not self.queue:
                if self.stopping:
                    return None
                self.condition.wait()
            until = time.monotonic() + self.batch_wait_s
            while len(self.queue) < self.max_batch and not self.stopping:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self.condition.wait(left)
            jobs = [self.queue.popleft() for _ in range(min(self.max_batch, len(self.queue)))]
            self.waiting -= len(jobs)
            self.metrics.queue_length.set(self.waiting)
        now = time.monotonic()
        for job in jobs:
            job.started = now
        return jobs

    def _run(self, jobs: list[Job]) -> None:
        live = [job for job in jobs if not self._ended_early(job)]
        if not live:
            return
        reset_peak_memory(self.engine.devices)
        groups: OrderedDict[str, list[Job]] = OrderedDict()
        for job in live:
            groups.setdefault(job.key, []).append(job)
        placed: dict[str, tuple[PrefixEntry, int, bool]] = {}
        fresh: list[tuple[str, VideoContext]] = []
        for key, group in groups.items():
            found = self.cache.get(key)
            if found is not None:
                placed[key] = (*found, True)
                self.metrics.prefix_cache.labels("hit").inc(len(group))
                continue
            self.metrics.prefix_cache.labels("miss").inc(len(group))
            context = self._context(group)
            if context is not None:
                fresh.append((key, context))
        if fresh:
            entry = self._prefill(fresh, groups)
            if entry is not None:
                self.cache.put(entry)
                for row, key in enumerate(entry.keys):
                    placed[key] = (entry, row, False)
        calls: OrderedDict[tuple[int, GenerationOptions, int],
                           tuple[PrefixEntry, list[tuple[int, Job, bool]]]] = OrderedDict()
        for key, group in groups.items():
            if key not in placed:
                continue
            entry, row, cached = placed[key]
            for job in group:
                generation = job.request.generation
                alone = id(job) if generation.do_sample else 0
                calls.setdefault((id(entry), generation, alone), (entry, []))[1].append(
                    (row, job, cached))
        for (_, generation, _), (entry, asked) in calls.items():
            self._answer(entry, asked, generation)

    def _ended_early(self, job: Job) -> bool:
        if job.cancelled.is_set():
            job.fail(Cancelled())
            return True
        if time.monotonic() > job.deadline:
            job.fail(timed_out())
            return True
        return False

    def _context(self, group: list[Job]) -> VideoContext | None:
        """The group's video encoded and compressed (its requests failed on an error)."""
        first = group[0]
        try:
            prepared = first.prepared or self._prepare_now(first)
            context = self.engine.video_context(prepared, first.request.compression)
            if context.encoded.feature_cache != "hit":
                self.metrics.encoder_runs.inc()
        except APIError as error:
            return self._fail_all(group, error)
        except (InputError, VideoError) as error:
            return self._fail_all(group, from_input_error(
                error, str(first.video.path), first.request.video_param))
        except Exception as error:
            return self._fail_all(group, engine_failure(error))
        # the cache keeps no frames: nothing after the encoder reads them
        context.encoded.video = dataclasses.replace(
            context.encoded.video, frames=np.zeros((0, 0, 0, 3), dtype=np.uint8))
        for job in group:
            job.prepared = None
        return context

    def _prefill(self, fresh: list[tuple[str, VideoContext]],
                 groups: dict[str, list[Job]]) -> PrefixEntry | None:
        try:
            opened = self.engine.open_contexts([context for _, context in fresh])
        except Exception as error:
            failure, out_of_memory = engine_failure(error), is_out_of_memory(error)
        else:
            return PrefixEntry(opened, [key for key, _ in fresh],
                               held_bytes(opened.contexts, opened.prefix))
        if out_of_memory:  # outside the except block: the failed call's frames are gone
            release_cached_memory()
        for key, _ in fresh:
            self._fail_all(groups[key], failure)
        return None

    def _answer(self, entry: PrefixEntry, asked: list[tuple[int, Job, bool]],
                generation: GenerationOptions) -> None:
        """One generate call for ``asked``; when it fails, each request alone (unless its
        text has been streamed already)."""
        requests = [(row, Request(str(job.video.path), job.request.question))
                    for row, job, _ in asked]
        try:
            answers = self.engine.ask_open(
                entry.opened, requests, generation,
                on_text=[job.text if job.request.stream else None for _, job, _ in asked],
                stop=[job.should_stop for _, job, _ in asked])
        except Exception as error:
            if isinstance(error, InputError | VideoError):
                failure = from_input_error(error, str(asked[0][1].video.path),
                                           asked[0][1].request.video_param)
            else:
                failure = engine_failure(error)
            if is_out_of_memory(error):
                release_cached_memory()
            if len(asked) == 1:
                asked[0][1].fail(failure)
                return
            for one in asked:
                if one[1].streamed:
                    one[1].fail(failure)
                else:
                    self._answer(entry, [one], generation)
            return
        self.metrics.engine_batches.inc()
        self.metrics.batch_size.observe(len(asked))
        for (_, job, cached), answer in zip(asked, answers, strict=True):
            if job.cancelled.is_set():
                job.fail(Cancelled())
            elif time.monotonic() > job.deadline:
                job.fail(timed_out())
            elif not job.future.done():
                job.future.set_result(JobResult(answer, (job.started or job.arrived)
                                                - job.arrived, len(asked), cached))

    def _fail_all(self, group: list[Job], error: BaseException) -> None:
        for job in group:
            job.fail(error)


def timed_out() -> APIError:
    return APIError(504, "the request ran past the server's time limit (--request-timeout)",
                    code="timeout")


def engine_failure(error: Exception) -> APIError:
    if is_out_of_memory(error):
        return APIError(503, "out of memory on the server: ask for fewer frames or a lower "
                        "ratio, or retry when it is less busy", code="out_of_memory",
                        headers={"Retry-After": "5"})
    log.error("engine error: %s: %s", type(error).__name__, first_line(error),
              exc_info=log.isEnabledFor(logging.DEBUG))
    return APIError(500, f"internal error: {type(error).__name__}: {first_line(error)}",
                    code="internal_error")
