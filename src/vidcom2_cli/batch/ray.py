"""``vidcom2 batch --ray``: the same batch over a Ray cluster, one model per worker.

The driver streams the input (one line at a time; only the ids seen are remembered), gathers
the questions about each video within a bounded window of lines, and hands chunks of whole
videos (about ``chunk`` items each) to a fixed set of Ray actors, at most two chunks per worker
at a time, so memory stays bounded whatever the input's size and a slow worker never holds many
videos. Each worker loads the model once and runs the very ``run_batch`` of a local batch
(prefetch, batching, reuse of a video's prefix, out-of-memory retries) on its chunk and returns
the records. The driver alone writes the output, each record one line flushed as it arrives
(so records come out of input order, unless ``ordered``), which keeps ``--resume`` working.

Faults: Ray restarts a worker process that dies and retries its unfinished chunk there
(``retries`` times each, our setting); a chunk whose worker is gone for good is given to a live
one; a chunk that fails on every try becomes error records. Every id is written exactly once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, first_line
from ..models import LoadOptions
from .input import BatchItem
from .local import BatchOptions, run_batch, video_groups
from .output import RecordOutput, RecordSink, iter_pending
from .progress import BatchSummary
from .ray_options import RayOptions, check_ray_options, import_ray

IN_FLIGHT_PER_WORKER = 2  # chunks queued on a worker: one running, the next ready
WINDOW_CHUNKS = 4  # lines read ahead to gather a video's questions: this many chunks' worth
_MODEL_ERROR = re.compile(r"ModelLoadError: (.+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class ChunkResult:
    records: list[dict[str, Any]]
    seconds: float


class RecordList(list):
    """A ``RecordSink`` that keeps the records (on a worker, for the driver to write)."""

    def write(self, record: dict[str, Any]) -> None:
        self.append(record)


class BatchWorker:
    """One model on one Ray worker process; answers chunks with the local ``run_batch``."""

    def __init__(self, model: str, load_options: LoadOptions, feature_cache: str | None,
                 threads: int) -> None:
        import torch

        from ..engine import Engine
        from ..feature_cache import FeatureCache

        torch.set_num_threads(threads)
        cache = None if feature_cache is None else FeatureCache(Path(feature_cache))
        self.engine = Engine.load(model, load_options, feature_cache=cache)

    def identity(self) -> tuple[int, str]:
        """(process id, node address)."""
        import ray

        return os.getpid(), ray.util.get_node_ip_address()

    def check_options(self, options: BatchOptions) -> str | None:
        """None when this model takes ``options``, else the one-line reason (e.g. pixel bounds
        asked of a family without them): found once here, not on every chunk."""
        try:
            self.engine.pixel_bounds(options.sampling)
            self.engine.accept(options.compression)
        except ValueError as error:
            return first_line(error)
        return None

    def check_video(self, path: str) -> str | None:
        """None when the worker can open the video, else why not."""
        from ..video import VideoError, probe

        try:
            probe(path)
        except VideoError as error:
            return first_line(error)
        return None

    def run(self, items: list[BatchItem], options: BatchOptions) -> ChunkResult:
        records = RecordList()
        start = time.perf_counter()
        run_batch(self.engine, items, options, records)
        return ChunkResult(list(records), time.perf_counter() - start)


@dataclass
class WorkerStats:
    label: str
    items: int = 0
    seconds: float = 0.0

    def render(self) -> str:
        rate = f"{self.items / self.seconds:.2f} items/s" if self.seconds else "-"
        return f"{self.label}: {self.items} items in {self.seconds:.1f} s busy, {rate}"


@dataclass
class RaySummary(BatchSummary):
    workers: list[WorkerStats] = field(default_factory=list)
    run: dict[str, Any] = field(default_factory=dict)  # what ran the first answer (run_info)

    def add(self, record: dict[str, Any]) -> None:
        super().add(record)
        if not self.run and isinstance(record.get("run"), dict):
            self.run = record["run"]

    def render(self) -> str:
        lines = [super().render()]
        lines += [f"  {stats.render()}" for stats in self.workers]
        return "\n".join(lines)


@dataclass
class _Chunk:
    items: list[BatchItem]
    tries: int = 0


@dataclass
class RayWorkers:
    """The model workers of one run: actor handles and a label for each."""

    ray: Any
    actors: list[Any]
    labels: list[str]


@contextmanager
def ray_workers(options: RayOptions, model: str, load_options: LoadOptions,
                feature_cache: str | None = None,
                batch_options: BatchOptions | None = None) -> Iterator[RayWorkers]:
    """Connect to (or start) Ray and start the workers, each loading the model once (and
    checking ``batch_options`` against it: InputError if it refuses them); on leaving (Ctrl-C
    included) the workers are stopped, and Ray too if this started it."""
    check_ray_options(options)
    ray = import_ray()
    if Path(model).exists():  # a local folder: the workers may run elsewhere than here
        model = str(Path(model).resolve())
    started = _connect(ray, options.address)
    actors: list[Any] = []
    try:
        actors, labels = _start_workers(ray, options, model, load_options, feature_cache)
        if batch_options is not None:
            problem = ray.get(actors[0].check_options.remote(batch_options))
            if problem is not None:
                raise InputError(problem)
        yield RayWorkers(ray, actors, labels)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if started:
            ray.shutdown()


def run_ray_batch(workers: RayWorkers, items: Iterable[BatchItem], options: BatchOptions,
                  ray_options: RayOptions, writer: RecordSink,
                  done: Mapping[str, int] | None = None,
                  on_record: Callable[[BatchSummary], None] | None = None) -> RaySummary:
    """Answer every item without a record in ``done`` on the workers, the driver writing each
    record as it arrives."""
    ray, actors = workers.ray, workers.actors
    in_flight: dict[Any, tuple[int, _Chunk]] = {}
    try:
        summary = RaySummary(total=0, workers=[WorkerStats(label) for label in workers.labels])
        counts: Counter[str] = Counter()
        pending = _counted(_absolute(iter_pending(_counted(items, counts, "read"),
                                                  done or {})), counts, "pending")
        output = RecordOutput(writer, summary, on_record, ray_options.ordered)
        chunks = _chunks(_checked_first_video(ray, actors[0], pending), ray_options.chunk,
                         options.reuse, output.expect, len(actors))
        alive = [True] * len(actors)
        load = [0] * len(actors)
        retry: list[_Chunk] = []

        def submit(chunk: _Chunk) -> bool:
            candidates = [index for index in range(len(actors))
                          if alive[index] and load[index] < IN_FLIGHT_PER_WORKER]
            if not candidates:
                return False
            worker = min(candidates, key=load.__getitem__)
            chunk.tries += 1
            load[worker] += 1
            in_flight[actors[worker].run.remote(chunk.items, options)] = (worker, chunk)
            return True

        exhausted = False
        while True:
            while retry and submit(retry[0]):
                retry.pop(0)
            while not exhausted and not retry:
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                elif not submit(chunk := _Chunk(chunk)):
                    retry.append(chunk)
                    break
            if not in_flight:  # done, or no live worker is left: what remains becomes errors
                for chunk in [*retry, *(_Chunk(items) for items in chunks)]:
                    output.failed(chunk.items, "not answered: no Ray worker is left alive")
                break
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            worker, chunk = in_flight.pop(ref)
            load[worker] -= 1
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as error:
                if isinstance(error, ray.exceptions.ActorDiedError):
                    alive[worker] = False  # restarts used up, or its node is gone
                if isinstance(error, ray.exceptions.RayTaskError):  # our code failed: no retry
                    output.failed(chunk.items, _cause(error))
                elif chunk.tries <= ray_options.retries and any(alive):
                    retry.append(chunk)
                else:
                    output.failed(chunk.items, f"failed on every try of a Ray worker "
                                               f"({_cause(error)})")
                continue
            stats = summary.workers[worker]
            stats.items += len(result.records)
            stats.seconds += result.seconds
            output.add(chunk.items, result.records)
        summary.total, summary.skipped = counts["read"], counts["read"] - counts["pending"]
        return summary
    finally:
        for ref in in_flight:
            ray.cancel(ref)


def _connect(ray: Any, address: str) -> bool:
    """Connect to (or start) Ray, quietly; True when this call started it."""
    if address not in ("local", "auto"):
        _check_reachable(address)
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address == "local":
            ray.init(include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except Exception as error:
        raise InputError(f"--ray: cannot reach the Ray cluster at {address} "
                         f"({first_line(error)})") from None
    return True


def _check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds on an address nothing answers at (Ray itself keeps retrying for
    minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise InputError(f"--ray: nothing answers at {address} ({reason}); start the cluster "
                         "with `ray start --head` or check the address") from None


def _start_workers(ray: Any, options: RayOptions, model: str, load_options: LoadOptions,
                   feature_cache: str | None) -> tuple[list[Any], list[str]]:
    resources = ray.cluster_resources()
    gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    per_worker = options.gpus_per_worker
    if per_worker is None:
        per_worker = 1.0 if gpus else 0.0
    workers = options.workers or (max(1, int(gpus // per_worker)) if gpus and per_worker else 1)
    if workers * per_worker > gpus:
        raise InputError(f"--workers/--gpus-per-worker: {workers} workers x {per_worker:g} GPUs "
                         f"need more than the cluster's {gpus:g} GPUs")
    if per_worker and load_options.device == "cpu":
        per_worker = 0.0
    cpus_each = min(1.0, cpus / workers)
    _wait_for_resources(ray, workers * cpus_each, workers * per_worker)
    actor = ray.remote(num_cpus=cpus_each, num_gpus=per_worker,
                       max_restarts=options.retries, max_task_retries=options.retries)(
        BatchWorker)
    threads = max(1, int(cpus // workers))
    actors = [actor.remote(model, load_options, feature_cache, threads) for _ in range(workers)]
    try:
        identities = ray.get([handle.identity.remote() for handle in actors])
    except ray.exceptions.RayError as error:
        for handle in actors:
            ray.kill(handle, no_restart=True)
        raise InputError(f"--model: the Ray workers could not load {model} "
                         f"({_cause(error)})") from None
    labels = [f"worker {index} (pid {pid} on {node})"
              for index, (pid, node) in enumerate(identities)]
    return actors, labels


def _wait_for_resources(ray: Any, cpus: float, gpus: float, patience_s: float = 15.0) -> None:
    """InputError unless the cluster has ``cpus`` and ``gpus`` free within ``patience_s`` (the
    workers of a run that just ended give theirs back a moment later); without this, actors
    that cannot be placed would wait for ever."""
    deadline = time.monotonic() + patience_s
    while True:
        free = ray.available_resources()
        free_cpus, free_gpus = float(free.get("CPU", 0)), float(free.get("GPU", 0))
        if cpus <= free_cpus + 1e-9 and gpus <= free_gpus + 1e-9:
            return
        if time.monotonic() > deadline:
            raise InputError(f"--workers: the workers need {cpus:g} CPUs and {gpus:g} GPUs, "
                             f"but the cluster has {free_cpus:g} CPUs and {free_gpus:g} GPUs "
                             "free")
        time.sleep(0.2)


def _cause(error: BaseException) -> str:
    """The useful line of a Ray error: the exception raised on the worker (a task's, or the
    model load's), without Ray's colour codes and task header."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return _ANSI.sub("", f"{type(cause).__name__}: {first_line(cause)}")
    text = _ANSI.sub("", str(error))
    found = _MODEL_ERROR.search(text)
    return found.group(1).strip() if found else _ANSI.sub("", first_line(error))


def _checked_first_video(ray: Any, actor: Any, items: Iterator[BatchItem]
                         ) -> Iterator[BatchItem]:
    """The items, after checking on a worker the first video this machine can open: videos are
    read by the workers, so their paths must be visible on every node."""
    checked = False
    for item in items:
        if not checked and item.error is None and os.path.isfile(item.video):
            checked = True
            try:
                problem = ray.get(actor.check_video.remote(item.video))
            except ray.exceptions.RayError:  # the worker is gone: its items will say so
                problem = None
            if problem is not None:
                raise InputError(f"--ray: a worker cannot read {item.video} ({problem}); the "
                                 "videos must be on storage every node sees, at the same path")
        yield item


def _absolute(items: Iterable[BatchItem]) -> Iterator[BatchItem]:
    """The items with absolute video paths: the workers' working folder is not the driver's."""
    for item in items:
        if isinstance(item.video, str) and item.video and not os.path.isabs(item.video):
            item = dataclasses.replace(item, video=os.path.abspath(item.video))
        yield item


def _counted(items: Iterable[BatchItem], counts: Counter[str], name: str
             ) -> Iterator[BatchItem]:
    """The items, counted into ``counts[name]`` as they go by."""
    for item in items:
        counts[name] += 1
        yield item


def _chunks(items: Iterator[BatchItem], size: int, reuse: bool,
            on_window: Callable[[list[BatchItem]], None], workers: int = 1
            ) -> Iterator[list[BatchItem]]:
    """Tasks of about ``size`` items: with reuse, the questions about one video within a window
    of ``WINDOW_CHUNKS * size`` lines stay in one task. A window too small to give every worker
    a task of ``size`` (a short input, the end of a long one) is cut into ``workers`` smaller
    tasks, so that no worker idles while another has all the work. ``on_window`` hears each
    window's items before its first task is handed out (what ``--ordered`` waits for)."""
    def pack(window: list[BatchItem]) -> Iterator[list[BatchItem]]:
        on_window(window)
        yield from _pack(window, min(size, max(1, math.ceil(len(window) / workers))), reuse)

    window: list[BatchItem] = []
    for item in items:
        window.append(item)
        if len(window) >= WINDOW_CHUNKS * size:
            yield from pack(window)
            window = []
    if window:
        yield from pack(window)


def _pack(window: list[BatchItem], size: int, reuse: bool) -> Iterator[list[BatchItem]]:
    task: list[BatchItem] = []
    for group in (video_groups(window) if reuse else [[item] for item in window]):
        task += group
        if len(task) >= size:
            yield task
            task = []
    if task:
        yield task
