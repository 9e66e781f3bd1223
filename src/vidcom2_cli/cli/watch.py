"""``vidcom2 watch SOURCE``: questions about a live stream, in bounded memory."""

from __future__ import annotations

import datetime
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..catalog import (
    DEFAULT_CHUNK_S,
    DEFAULT_FORGET,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MEMORY_TOKENS,
    DEFAULT_METHOD,
    DEFAULT_MODEL,
    DEFAULT_RATIO,
    DEFAULT_WATCH_FPS,
)
from ..errors import InputError, first_line
from . import console
from .app import app
from .checks import (
    OptionError,
    check_generation_options,
    check_load_options,
    check_numbers,
    check_sampling_options,
    check_stream_memory,
    compression_profile_of,
    parse_method_options,
)
from .options import (
    AttnOption,
    DebugOption,
    DeviceMapOption,
    DeviceOption,
    DtypeOption,
    MaxNewTokensOption,
    MaxPixelsOption,
    MethodOption,
    MethodSettingOption,
    MinPixelsOption,
    ModelOption,
    RatioOption,
    SampleOption,
    SeedOption,
    TemperatureOption,
    TopPOption,
)
from .runtime import answer_options, compression_options, load_engine, preflight

if TYPE_CHECKING:
    from ..options import GenerationOptions
    from ..watch.memory import StreamAnswer, StreamMemory
    from ..watch.session import Watcher



@app.command()
def watch(
    source: Annotated[str, typer.Argument(
        help="A live source: rtsp://, udp://, http(s):// (HLS too), a device such as "
        "/dev/video0, - for stdin, or a file still being written.", metavar="SOURCE")],
    fps: Annotated[float, typer.Option(help="Frames sampled per second of the stream.")
                   ] = DEFAULT_WATCH_FPS,
    chunk: Annotated[float, typer.Option(help="Seconds of stream encoded and compressed "
                                         "together.")] = DEFAULT_CHUNK_S,
    memory_tokens: Annotated[int, typer.Option(
        help="Most tokens the stream may hold in the model's cache (0: no bound).")
    ] = DEFAULT_MEMORY_TOKENS,
    forget: Annotated[str, typer.Option(
        help="When memory is full: compress (older chunks keep fewer tokens, the oldest "
        "are dropped last) or oldest (drop the oldest chunks).")] = DEFAULT_FORGET,
    ask: Annotated[str | None, typer.Option(
        help="Answer this question periodically, one JSON line per answer.")] = None,
    every: Annotated[float | None, typer.Option(
        help="With --ask: seconds of stream between answers (default: every chunk).")
    ] = None,
    duration: Annotated[float | None, typer.Option(
        help="Stop after this many seconds of stream.")] = None,
    until: Annotated[str | None, typer.Option(
        help="Stop at this local time, HH:MM or HH:MM:SS.")] = None,
    demuxer: Annotated[str | None, typer.Option(
        "--format", help="FFmpeg demuxer of the source (e.g. mpegts, v4l2), where it cannot "
        "be told from the source.")] = None,
    reconnect: Annotated[float, typer.Option(
        help="Seconds to keep reopening a network source that dropped (0: end).")] = 30.0,
    open_timeout: Annotated[float, typer.Option(
        help="Seconds to wait for a network source to open or send.")] = 10.0,
    silence: Annotated[float, typer.Option(
        help="A network source silent this many seconds has dropped (and is reopened).")
    ] = 5.0,
    idle: Annotated[float, typer.Option(
        help="A file source ends after it has not grown for this many seconds.")] = 5.0,
    ratio: RatioOption = DEFAULT_RATIO,
    method: MethodOption = DEFAULT_METHOD,
    method_option: MethodSettingOption = None,
    model: ModelOption = DEFAULT_MODEL,
    min_pixels: MinPixelsOption = None,
    max_pixels: MaxPixelsOption = None,
    max_new_tokens: MaxNewTokensOption = DEFAULT_MAX_NEW_TOKENS,
    sample: SampleOption = False,
    temperature: TemperatureOption = None,
    top_p: TopPOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    attn: AttnOption = "auto",
    device_map: DeviceMapOption = None,
    seed: SeedOption = 0,
    debug: DebugOption = False,
) -> None:
    """Ask questions about a live stream while it plays: every --chunk seconds of frames is
    encoded and compressed once and appended to the model's cache, which holds at most
    --memory-tokens. Reads questions as `chat` does (not in a terminal: one per line, JSON
    answers), or answers --ask every --every seconds. Ctrl-C ends with a summary."""
    with console.cli_errors(debug, ask is not None or not sys.stdin.isatty()):
        check_numbers(ratio, max_new_tokens)
        check_generation_options(sample, temperature, top_p)
        check_load_options(device, dtype, attn)
        # --fps and the pixel bounds as ask checks them (a stream has no --frames)
        check_sampling_options(1, fps, 1, min_pixels, max_pixels)
        _check_watch_options(chunk, memory_tokens, forget, ask, every, duration,
                             reconnect, open_timeout, silence, idle)
        deadline = None if until is None else _deadline(until)
        interactive = ask is None and sys.stdin.isatty()
        if source == "-" and ask is None:
            raise OptionError("SOURCE -: stdin carries the video, so give the question with "
                              "--ask")
        from ..watch.session import chunk_frames
        from ..watch.source import QUEUE_CHUNKS, SourceReader, parse_source

        spec = parse_source(source, demuxer)
        method_settings = parse_method_options(method_option)
        preflight(model, [method])
        frames_per_chunk = chunk_frames(chunk, fps)
        reader = SourceReader(spec, fps, capacity=QUEUE_CHUNKS * frames_per_chunk,
                              open_timeout_s=open_timeout, read_timeout_s=silence,
                              reconnect_s=reconnect, idle_s=idle,
                              on_event=lambda line: console.print_plain(line, to_stderr=True))
        from ..decoders import library_logs

        library_logs(show=debug)
        reader.start()  # the source opens (or fails, one line) before torch is imported
        try:
            _watch(reader, spec.text, model, device, dtype, attn, device_map, interactive,
                   ask, every, duration, deadline, frames_per_chunk, fps, memory_tokens,
                   forget, ratio, method, seed, method_settings, min_pixels, max_pixels,
                   max_new_tokens, sample, temperature, top_p)
        finally:
            reader.stop()


def _watch(reader: Any, source: str, model: str, device: str, dtype: str, attn: str,
           device_map: str | None, interactive: bool, ask: str | None, every: float | None,
           duration: float | None, deadline: float | None, frames_per_chunk: int, fps: float,
           memory_tokens: int, forget: str, ratio: float, method: str, seed: int,
           method_settings: tuple[tuple[str, float], ...], min_pixels: int | None,
           max_pixels: int | None, max_new_tokens: int, sample: bool,
           temperature: float | None, top_p: float | None) -> None:
    """Load the model, run the chunker and the questions, print the summary."""
    from ..options import check_options
    from ..watch.memory import StreamMemory
    from ..watch.session import Schedule, Watcher

    compression = compression_options(ratio, method, seed, method_settings)
    generation = answer_options(max_new_tokens, sample, temperature, top_p, seed)
    check_options(compression, generation, compression_profile_of(model))
    engine = load_engine(model, device, dtype, attn, device_map, not interactive, None,
                         max_new_tokens)
    try:
        bounds = engine.adapter.pixel_bounds(min_pixels, max_pixels)
    except ValueError as error:
        raise InputError(f"--min-pixels/--max-pixels: {error}") from None
    memory = StreamMemory(engine, compression, fps, memory_tokens or None,
                          "oldest" if forget == "oldest" else "compress", bounds)
    schedule = None if ask is None else Schedule(every or frames_per_chunk / fps)
    holder: dict[str, Watcher] = {}

    def on_chunk(event: Any) -> None:
        if ask is None or schedule is None or not schedule.due(event.report.end_s):
            return
        watcher = holder["watcher"]
        try:
            answer = memory.ask(ask, generation)
        except InputError as error:
            console.print_error(first_line(error))
            return
        watcher.answers += 1
        console.print_json(answer_record(answer, event.lag_s, event.skipped, model))

    watcher = Watcher(reader, memory, frames_per_chunk, on_chunk, duration, deadline)
    holder["watcher"] = watcher
    if interactive:
        console.print_plain(f"watching {source}", to_stderr=True)
        console.print_plain("ask at the prompt; an empty line shows the memory; Ctrl-D ends",
                            to_stderr=True)
    watcher.start()
    try:
        if ask is not None:
            while not watcher.wait(0.2):
                pass
        elif interactive:
            _question_loop(memory, watcher, generation)
        else:
            _stdin_questions(memory, watcher, generation, model)
    except KeyboardInterrupt:
        sys.stdout.write("\n" if interactive else "")
    finally:
        watcher.stop()
        watcher.join()
    for line in watcher.summary().lines():
        console.print_plain(line, to_stderr=True)
    if watcher.error is not None:
        raise watcher.error


def _question_loop(memory: StreamMemory, watcher: Watcher, generation: GenerationOptions
                   ) -> None:
    """Questions typed at a prompt, each answered about what is held when it is asked."""
    import readline  # noqa: F401  (gives input() line editing and history)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    while True:
        try:
            question = input("? ")
        except EOFError:
            write("\n")
            return
        if watcher.error is not None:
            return
        if not question.strip():
            console.print_plain(memory_line(memory, watcher), to_stderr=True)
            continue
        while not memory.chunks and not watcher.wait(0.1):
            pass  # the first chunk is still being encoded
        try:
            answer = memory.ask(question, generation, on_text=write)
        except InputError as error:
            console.print_error(first_line(error))
            continue
        write("\n")
        watcher.answers += 1
        console.print_plain(answer_footer(answer, watcher.lag_s), to_stderr=True)


def _stdin_questions(memory: StreamMemory, watcher: Watcher, generation: GenerationOptions,
                     model: str) -> None:
    """One question per stdin line, each answered (one JSON line) once a chunk is held."""
    for line in sys.stdin:
        question = line.strip()
        if not question:
            continue
        while not memory.chunks and not watcher.wait(0.1):
            pass
        if watcher.error is not None:
            return
        try:
            answer = memory.ask(question, generation)
        except InputError as error:
            console.print_error(first_line(error))
            continue
        watcher.answers += 1
        console.print_json(answer_record(answer, watcher.lag_s, watcher.reader.queue.skipped,
                                         model))


def answer_record(answer: StreamAnswer, lag_s: float, skipped: int, model: str
                  ) -> dict[str, Any]:
    """One answer as a JSON object: the stream time it covers and the memory it came from."""
    return {"question": answer.question, "answer": answer.answer,
            "start_s": round(answer.start_s, 3), "end_s": round(answer.end_s, 3),
            "chunks_held": answer.chunks_held, "chunks_seen": answer.chunks_seen,
            "tokens_held": answer.tokens_held, "lag_s": round(lag_s, 3),
            "frames_skipped": skipped, "latency_ms": round(answer.latency_ms, 1),
            "generated": answer.generated, "model": model}


def answer_footer(answer: StreamAnswer, lag_s: float) -> str:
    from ..watch.session import clock

    return (f"stream {clock(answer.start_s)}-{clock(answer.end_s)} · {answer.chunks_held} "
            f"chunks, {answer.tokens_held} tokens held · lag {lag_s:.1f} s · "
            f"{answer.latency_ms:.0f} ms")


def memory_line(memory: StreamMemory, watcher: Watcher) -> str:
    from ..watch.session import clock

    start, end = memory.time_range()
    return (f"holding {clock(start)}-{clock(end)}: {len(memory.chunks)} of "
            f"{memory.stats.chunks_seen} chunks, {memory.tokens_held} tokens; lag "
            f"{watcher.lag_s:.1f} s, {watcher.reader.queue.skipped} frames skipped")


def _check_watch_options(chunk: float, memory_tokens: int, forget: str,
                         ask: str | None, every: float | None, duration: float | None,
                         reconnect: float, open_timeout: float, silence: float, idle: float
                         ) -> None:
    for name, value in (("--chunk", chunk), ("--open-timeout", open_timeout),
                        ("--silence", silence), ("--idle", idle)):
        if not value > 0:
            raise OptionError(f"{name}: must be above 0, got {value:g}")
    for name, optional in (("--every", every), ("--duration", duration)):
        if optional is not None and not optional > 0:
            raise OptionError(f"{name}: must be above 0, got {optional:g}")
    if reconnect < 0:
        raise OptionError(f"--reconnect: must be 0 or more, got {reconnect:g}")
    check_stream_memory(memory_tokens, forget)
    if every is not None and ask is None:
        raise OptionError("--every: needs --ask (the question to answer periodically)")
    if ask is not None and not ask.strip():
        raise OptionError("--ask: the question is empty")


def _deadline(text: str) -> float:
    """``--until HH:MM[:SS]`` as a time.time() value: today, or tomorrow once it has passed."""
    for layout in ("%H:%M:%S", "%H:%M"):
        try:
            moment = datetime.datetime.strptime(text, layout).time()
        except ValueError:
            continue
        now = datetime.datetime.now()
        target = datetime.datetime.combine(now.date(), moment)
        if target <= now:
            target += datetime.timedelta(days=1)
        return target.timestamp()
    raise OptionError(f"--until: not a time of day HH:MM or HH:MM:SS, got {text!r}")

