"""Questions about many videos answered as a stream, in the order they come: the batch pipeline.

Videos are decoded and preprocessed up to ``prefetch`` groups ahead on worker threads while the
calling thread runs the model; each group's video is encoded on the calling thread, one at a
time, and every ``batch_size`` encoded groups are answered together. A group whose video cannot
be prepared or encoded gets its error (one line) for each of its questions and waits for the
batch it falls in, so that outcomes keep the groups' order. Running out of memory while
encoding answers the groups queued before it (freeing their features) and tries once more.

The steps come in as callables (``Engine.answer_stream`` passes its own), so this module
knows the order of the work, not the model.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from .errors import InputError, VideoError, first_line
from .timing import is_out_of_memory, release_cached_memory
from .work import (
    Answer,
    EncodedRequest,
    PreparedRequest,
    QuestionGroup,
    Request,
    VideoQuestions,
)

# Threads decoding ahead; their processor calls take turns (the adapter's lock), decoding does
# not.
PREFETCH_WORKERS = 2
OUT_OF_MEMORY = "out of memory"  # _encode's answer when a retry may still succeed

Prepare = Callable[[Request], PreparedRequest]
Encode = Callable[[PreparedRequest], EncodedRequest]
AnswerGroups = Callable[[list[QuestionGroup]], list[list[Answer | str]]]


def answer_in_order(groups: Iterable[VideoQuestions], prepare: Prepare, encode: Encode,
                    answer: AnswerGroups, batch_size: int, prefetch: int,
                    reset_peak: Callable[[], None]
                    ) -> Generator[list[Answer | str], None, None]:
    """Each group's outcomes (an ``Answer`` or a one-line error per question), in the groups'
    order, each batch's as soon as it is answered (see the module's docstring).
    ``reset_peak`` is called before a batch's first encoding, so that the peak memory each
    answer reports is that of its batch."""
    queue: list[tuple[VideoQuestions, EncodedRequest | str]] = []  # str: the group's error
    ready = 0  # encoded groups in the queue

    def flush() -> list[list[Answer | str]]:
        answered = iter(answer([QuestionGroup(video, group.questions) for group, video in queue
                                if isinstance(video, EncodedRequest)]))
        outcomes = [next(answered) if isinstance(video, EncodedRequest)
                    else [video] * len(group.questions) for group, video in queue]
        queue.clear()
        return outcomes

    with _prepared_in_order(prepare, list(groups), prefetch) as prepared:
        for group, outcome in prepared:
            if isinstance(outcome, str):
                queue.append((group, outcome))
                continue
            if ready == 0:
                reset_peak()
            encoded = _encode(encode, outcome)
            if encoded is OUT_OF_MEMORY:  # answer the queued groups, freeing their features
                yield from flush()
                ready = 0
                reset_peak()
                encoded = _encode(encode, outcome, retry=False)
            queue.append((group, encoded))
            if isinstance(encoded, str):
                continue
            ready += 1
            if ready == batch_size:
                yield from flush()
                ready = 0
    yield from flush()


def _prepare(prepare: Prepare, group: VideoQuestions) -> PreparedRequest | str:
    """The group's video decoded and preprocessed, or its error (one line).

    An unexpected failure (a decoder or processor bug on one odd file) is the group's error
    too, named by its type, so that one file never stops the run or every later ``--resume``.
    """
    if group.error is not None:
        return group.error
    try:
        return prepare(group.questions[0].request)
    except (InputError, VideoError, ValueError) as error:
        return first_line(error)
    except Exception as error:
        return f"{type(error).__name__}: {first_line(error)}"


def _encode(encode: Encode, prepared: PreparedRequest, retry: bool = True
            ) -> EncodedRequest | str:
    """A prepared video through the vision encoder, or its error (one line).

    Running out of memory with ``retry`` gives ``OUT_OF_MEMORY``, so that the caller can free
    memory (answer the groups queued before it) and try once more. Any other failure, and
    running out again, is the group's error and the run goes on: ending the run would stop
    every ``--resume`` at the same item.
    """
    try:
        return encode(prepared)
    except (InputError, VideoError, ValueError) as error:
        return first_line(error)
    except Exception as error:
        failure = f"{type(error).__name__}: {first_line(error)}"
        out_of_memory = is_out_of_memory(error)
    if out_of_memory:  # outside the except block, so the failed call's tensors are freed
        release_cached_memory()
        if retry:
            return OUT_OF_MEMORY
    return failure


@contextmanager
def _prepared_in_order(prepare: Prepare, groups: list[VideoQuestions], prefetch: int
                       ) -> Iterator[Iterator[tuple[VideoQuestions, PreparedRequest | str]]]:
    """The groups in order, each with its ``_prepare`` outcome.

    With ``prefetch`` > 0, up to that many groups after the one handed out are being prepared
    on worker threads meanwhile; leaving the block (Ctrl-C included) cancels those not
    started. The one or two decodes already running finish on their threads (the interpreter
    joins them at exit, a few seconds at most). With 0, each is prepared here when asked for.
    """
    if prefetch == 0:
        yield ((group, _prepare(prepare, group)) for group in groups)
        return
    pool = ThreadPoolExecutor(max_workers=min(prefetch, PREFETCH_WORKERS),
                              thread_name_prefix="vidcom2-prefetch")
    try:
        yield _prefetched(pool, prepare, groups, prefetch)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _prefetched(pool: ThreadPoolExecutor, prepare: Prepare, groups: list[VideoQuestions],
                prefetch: int) -> Iterator[tuple[VideoQuestions, PreparedRequest | str]]:
    pending: deque[tuple[VideoQuestions, Future[PreparedRequest | str]]] = deque()
    for group in groups:
        pending.append((group, pool.submit(_prepare, prepare, group)))
        if len(pending) > prefetch:
            head, future = pending.popleft()
            yield head, future.result()
    while pending:
        head, future = pending.popleft()
        yield head, future.result()
