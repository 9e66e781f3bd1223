"""The ``vidcom2`` command: parse options, call the engine, render the result.

Exit codes: 0 ok, 2 bad usage or bad input (one line on stderr), 1 runtime failure.
A traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from .batch import (
    BatchOptions,
    ResultWriter,
    check_batch_options,
    pending_items,
    prepare_output,
    progress_bar,
    read_input,
    run_batch,
)
from .bench import check_bench_options, parse_floats, run_bench
from .compression import METHODS
from .engine import (
    Answer,
    CompressionOptions,
    Engine,
    GenerationOptions,
    InputError,
    Request,
    SamplingOptions,
    VideoContext,
    check_options,
    check_sampling,
)
from .errors import first_line
from .feature_cache import ENVIRONMENT_VARIABLE as FEATURE_CACHE_VARIABLE
from .feature_cache import FeatureCache
from .heatmap import save_contact_sheet
from .models import DEFAULT_MODEL, SUPPORTED_MODEL_TYPES, LoadOptions, ModelLoadError
from .models.base import PrefixCache
from .models.presets import RANDOM_PREFIX, preset_names, preset_source
from .report import (
    RANDOM_WEIGHTS_NOTE,
    answer_to_json,
    bench_rows_to_json,
    chat_ready_line,
    megabytes,
    question_footer,
    render_answer,
    render_bench,
    render_question_answer,
    render_summary,
)
from .timing import is_out_of_memory
from .video import VideoError, load_video, probe

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Ask a video LLM about a video, with VidCom2 visual-token compression.")
# Pipes and files get a wide fixed width instead of rich's 80 columns, so tables do not wrap.
stdout = Console() if sys.stdout.isatty() else Console(width=160)
stderr = Console(stderr=True)

BAD_INPUT = (InputError, VideoError, ModelLoadError)

ModelOption = Annotated[str, typer.Option("--model", "-m", help="Hub id, local checkpoint "
                                          "directory, or random:NAME for a random-weight "
                                          "preset (see `vidcom2 models`).")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")]
DtypeOption = Annotated[str, typer.Option(help="auto (bf16 on an Ampere+ GPU, else fp16; fp32 on "
                                          "CPU), bf16, fp16, fp32.")]
AttnOption = Annotated[str, typer.Option("--attn", help="auto (flash_attention_2 where it can "
                                         "run, else sdpa), flash_attention_2, sdpa, eager.")]
DeviceMapOption = Annotated[str | None, typer.Option(help="Spread the model over several GPUs, "
                                                     "e.g. 'auto'.")]
FramesOption = Annotated[int, typer.Option(help="Frames sampled evenly over the whole video.")]
FpsOption = Annotated[float | None, typer.Option(help="Sample this many frames per second "
                                                 "instead (capped by --max-frames).")]
MaxFramesOption = Annotated[int, typer.Option(help="Cap on frames when sampling by --fps.")]
MinPixelsOption = Annotated[int | None, typer.Option(help="Qwen families: smallest area of a "
                                                     "frame in pixels (default: the family's).")]
MaxPixelsOption = Annotated[int | None, typer.Option(help="Qwen families: largest area of a "
                                                     "frame in pixels (default: the family's).")]
DebugOption = Annotated[bool, typer.Option(help="Show tracebacks and library logs.")]
RatioOption = Annotated[float, typer.Option(help="Fraction of video tokens to keep, in (0, 1].")]
MethodOption = Annotated[str, typer.Option(help=f"One of: {', '.join(METHODS)}.")]
MaxNewTokensOption = Annotated[int, typer.Option(help="Longest answer, in tokens.")]
SampleOption = Annotated[bool, typer.Option(help="Sample instead of greedy decoding.")]
TemperatureOption = Annotated[float | None, typer.Option(help="With --sample.")]
TopPOption = Annotated[float | None, typer.Option(help="With --sample.")]
FeatureCacheOption = Annotated[Path | None, typer.Option(
    envvar=FEATURE_CACHE_VARIABLE, show_envvar=True,
    help="Keep the vision encoder's output of each video in this folder, keyed by the file's "
    "content, the model and the sampling: a later run on the same video (another question, "
    "ratio or method) skips decoding and the encoder. Nothing is cached without it.")]


@contextmanager
def cli_errors(debug: bool) -> Iterator[None]:
    """Turn failures into one stderr line and an exit code (tracebacks only with --debug)."""
    if not debug:
        _quiet_libraries()
    try:
        yield
    except typer.Exit:
        raise
    except BAD_INPUT as error:
        if debug:
            raise
        stderr.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        stderr.print("interrupted")
        raise typer.Exit(130) from None
    except Exception as error:
        if debug:
            raise
        stderr.print(f"[red]error:[/red] {_runtime_message(error)}", highlight=False,
                     soft_wrap=True)
        raise typer.Exit(1) from None


def _runtime_message(error: Exception) -> str:
    if is_out_of_memory(error):
        return ("out of memory: lower --frames, lower --ratio, or use a smaller --model "
                "(or a smaller --batch-size in batch mode)")
    return (f"{type(error).__name__}: {first_line(error)} (run again with --debug for the "
            "traceback)")


def _quiet_libraries() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _load_engine(model: str, device: str, dtype: str, attn: str, device_map: str | None,
                 quiet: bool = False, feature_cache: Path | None = None) -> Engine:
    options = LoadOptions(device=device, dtype=dtype, attention=attn, device_map=device_map)
    cache = None if feature_cache is None else _feature_cache(feature_cache)
    with nullcontext() if quiet else stderr.status(f"loading {model} ..."):
        engine = Engine.load(model, options, feature_cache=cache)
    if engine.random_weights:  # on stderr too, so that --json and --quiet runs say it
        stderr.print(RANDOM_WEIGHTS_NOTE, style="bold yellow")
    return engine


def _feature_cache(directory: Path) -> FeatureCache:
    if directory.exists() and not directory.is_dir():
        raise InputError(f"--feature-cache: {directory} is not a folder")
    return FeatureCache(directory, report=lambda message: stderr.print(
        message, style="yellow", markup=False, highlight=False))


def _check_video(video: Path) -> None:
    """Fail fast on a bad video before the (slow) model load."""
    probe(video)


def _print_json(payload: object) -> None:
    sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
    sys.stdout.flush()


@app.command()
def ask(
    video: Annotated[Path, typer.Argument(help="Video file.")],
    questions: Annotated[list[str], typer.Argument(
        metavar="QUESTION...", help="One or more questions about the video; several are "
        "answered from one decode, one encoding, one compression and one prefill of the "
        "video's prompt prefix.")],
    ratio: RatioOption = CompressionOptions.ratio,
    method: MethodOption = CompressionOptions.method,
    model: ModelOption = DEFAULT_MODEL,
    frames: FramesOption = SamplingOptions.frames,
    fps: FpsOption = None,
    max_frames: MaxFramesOption = SamplingOptions.max_frames,
    min_pixels: MinPixelsOption = None,
    max_pixels: MaxPixelsOption = None,
    max_new_tokens: MaxNewTokensOption = GenerationOptions.max_new_tokens,
    sample: SampleOption = False,
    temperature: TemperatureOption = None,
    top_p: TopPOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    attn: AttnOption = "auto",
    device_map: DeviceMapOption = None,
    seed: Annotated[int, typer.Option(help="Seed for random selection and sampling.")] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object per "
                                              "question, one per line.")] = False,
    heatmap: Annotated[Path | None, typer.Option(help="Write a PNG contact sheet of the frames "
                                                  "with dropped tokens dimmed.")] = None,
    feature_cache: FeatureCacheOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the answers.")] = False,
    debug: DebugOption = False,
) -> None:
    """Answer one or more questions about a video."""
    with cli_errors(debug):
        compression = CompressionOptions(ratio=ratio, method=method, seed=seed)
        generation = GenerationOptions(max_new_tokens=max_new_tokens, do_sample=sample,
                                       temperature=temperature, top_p=top_p, seed=seed)
        sampling = SamplingOptions(frames=frames, fps=fps, max_frames=max_frames,
                                   min_pixels=min_pixels, max_pixels=max_pixels)
        check_options(compression, generation)
        check_sampling(sampling)
        if heatmap is not None and not heatmap.parent.is_dir():
            raise InputError(f"--heatmap: folder {heatmap.parent} does not exist")
        if not any(question.strip() for question in questions):
            raise InputError("question: the question is empty")
        _check_video(video)
        engine = _load_engine(model, device, dtype, attn, device_map, quiet or json_output,
                              feature_cache)
        if len(questions) == 1:
            answers = [engine.ask(Request(str(video), questions[0]), sampling, compression,
                                  generation)]
        else:
            answers = engine.ask_many(str(video), questions, sampling, compression,
                                      generation)
        _print_answers(answers, json_output, quiet, heatmap, sampling,
                       several=len(questions) > 1)


def _print_answers(answers: Iterable[Answer], json_output: bool, quiet: bool,
                   heatmap: Path | None = None, sampling: SamplingOptions = SamplingOptions(),
                   several: bool = False) -> None:
    """Each answer as it comes: a JSON line, the bare answer, or the human report (for
    several questions of one video, the shared summary once and then each answer)."""
    for index, result in enumerate(answers):
        if index == 0 and heatmap is not None:
            save_contact_sheet(heatmap, _frames_of(result, sampling), result.plan,
                               frames_per_unit=result.frames_per_unit)
        if json_output:
            payload = answer_to_json(result)
            payload["heatmap"] = str(heatmap) if heatmap is not None else None
            _print_json(payload)
        elif quiet:
            stdout.print(result.answer, highlight=False, markup=False)
        elif several:
            if index == 0:
                stdout.print(render_summary(result))
            stdout.print(render_question_answer(result, index))
        else:
            stdout.print(render_answer(result))
        if index == 0 and heatmap is not None and not (json_output or quiet):
            stdout.print(f"heatmap written to {heatmap}", markup=False, highlight=False)


def _frames_of(answer: Answer, sampling: SamplingOptions) -> np.ndarray:
    """The sampled frames, decoded again (the same sampling picks the same frames) when a
    feature-cache hit skipped decoding."""
    if len(answer.video.frames):
        return answer.video.frames
    return load_video(Path(answer.request.video), num_frames=sampling.frames, fps=sampling.fps,
                      max_frames=sampling.max_frames,
                      multiple_of=answer.frames_per_unit).frames


@app.command()
def chat(
    video: Annotated[Path, typer.Argument(help="Video file.")],
    ratio: RatioOption = CompressionOptions.ratio,
    method: MethodOption = CompressionOptions.method,
    model: ModelOption = DEFAULT_MODEL,
    frames: FramesOption = SamplingOptions.frames,
    fps: FpsOption = None,
    max_frames: MaxFramesOption = SamplingOptions.max_frames,
    min_pixels: MinPixelsOption = None,
    max_pixels: MaxPixelsOption = None,
    max_new_tokens: MaxNewTokensOption = GenerationOptions.max_new_tokens,
    sample: SampleOption = False,
    temperature: TemperatureOption = None,
    top_p: TopPOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    attn: AttnOption = "auto",
    device_map: DeviceMapOption = None,
    seed: Annotated[int, typer.Option(help="Seed for random selection and sampling.")] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Not in a terminal: one JSON "
                                              "object per question, one per line.")] = False,
    feature_cache: FeatureCacheOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Not in a terminal: print "
                                        "only the answers.")] = False,
    debug: DebugOption = False,
) -> None:
    """Ask questions about a video interactively: it is decoded, encoded, compressed and
    prefilled once. Not in a terminal, reads one question per line from stdin."""
    with cli_errors(debug):
        compression = CompressionOptions(ratio=ratio, method=method, seed=seed)
        generation = GenerationOptions(max_new_tokens=max_new_tokens, do_sample=sample,
                                       temperature=temperature, top_p=top_p, seed=seed)
        sampling = SamplingOptions(frames=frames, fps=fps, max_frames=max_frames,
                                   min_pixels=min_pixels, max_pixels=max_pixels)
        check_options(compression, generation)
        check_sampling(sampling)
        _check_video(video)
        interactive = sys.stdin.isatty()
        questions = [] if interactive else [line.strip() for line in sys.stdin if line.strip()]
        if not interactive and not questions:
            raise InputError("stdin: no question (give one question per line)")
        engine = _load_engine(model, device, dtype, attn, device_map,
                              quiet or json_output or not interactive, feature_cache)
        if not interactive:
            _print_answers(engine.ask_many(str(video), questions, sampling, compression,
                                           generation), json_output, quiet, several=True)
            return
        with stderr.status(f"decoding {video.name} ...") as status:
            context, prefix = engine.open(
                str(video), sampling, compression,
                on_stage=lambda stage: status.update(f"{stage} {video.name} ..."))
        stderr.print(chat_ready_line(context, prefix), markup=False, highlight=False)
        _chat_loop(engine, context, prefix, generation)


def _chat_loop(engine: Engine, context: VideoContext, prefix: PrefixCache,
               generation: GenerationOptions) -> None:
    """Read questions with line editing and history until an empty line or Ctrl-D; Ctrl-C
    stops the answer being written, a second one at the prompt ends the chat."""
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
        if not question.strip():
            return
        try:
            request = Request(context.encoded.request.video, question)
            answer = engine.ask_contexts([context], prefix, [(0, request)], generation,
                                         on_text=write)[0]
        except KeyboardInterrupt:
            write("\n")
            stderr.print("(answer interrupted)", style="dim")
            continue
        except InputError as error:
            stderr.print(f"error: {error}", markup=False, highlight=False)
            continue
        write("\n")
        stderr.print(question_footer(answer), style="dim", markup=False, highlight=False)


@app.command()
def bench(
    video: Annotated[Path, typer.Argument(help="Video file.")],
    ratios: Annotated[str, typer.Option(help="Comma-separated keep ratios.")]
    = "1.0,0.5,0.25,0.15,0.1",
    methods: Annotated[str, typer.Option(help="Comma-separated methods.")] = "vidcom2,random",
    question: Annotated[str, typer.Option(help="Question asked at every setting.")]
    = "Describe what happens in this video.",
    repeats: Annotated[int, typer.Option(help="Measured runs per setting (median).")] = 3,
    warmup: Annotated[int, typer.Option(help="Unmeasured runs before each setting.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated at every setting "
                                                "(forced, so every row decodes as many).")]
    = 16,
    model: ModelOption = DEFAULT_MODEL,
    frames: FramesOption = SamplingOptions.frames,
    fps: FpsOption = None,
    max_frames: MaxFramesOption = SamplingOptions.max_frames,
    min_pixels: MinPixelsOption = None,
    max_pixels: MaxPixelsOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    attn: AttnOption = "auto",
    device_map: DeviceMapOption = None,
    seed: Annotated[int, typer.Option(help="Seed for random selection.")] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
    feature_cache: FeatureCacheOption = None,
    debug: DebugOption = False,
) -> None:
    """Measure prefill and decode at several ratios and methods on one video."""
    with cli_errors(debug):
        ratio_list = parse_floats(ratios, "--ratios")
        method_list = [name.strip() for name in methods.split(",") if name.strip()]
        generation = GenerationOptions(max_new_tokens=max_new_tokens,
                                       min_new_tokens=max_new_tokens)
        sampling = SamplingOptions(frames=frames, fps=fps, max_frames=max_frames,
                                   min_pixels=min_pixels, max_pixels=max_pixels)
        check_bench_options(ratio_list, method_list, generation, repeats, warmup, seed)
        check_sampling(sampling)
        _check_video(video)
        engine = _load_engine(model, device, dtype, attn, device_map, json_output,
                              feature_cache)
        prepared = engine.prepare(Request(str(video), question), sampling)
        with stderr.status("benchmarking ...") if not json_output else nullcontext():
            rows = run_bench(engine, prepared, ratio_list, method_list, generation,
                             repeats=repeats, warmup=warmup, seed=seed)
        if json_output:
            _print_json(bench_rows_to_json(rows))
            return
        title = (f"{model} · {len(prepared.video.indices)} frames · "
                 f"{engine.device.type} {str(engine.loaded.dtype).removeprefix('torch.')} "
                 f"{engine.loaded.attention} · median of {repeats}, {max_new_tokens} new tokens")
        if engine.random_weights:
            title += " · RANDOM WEIGHTS"
        stdout.print(render_bench(rows, title))
        stdout.print(f"measured once for all rows: video_decode {rows[0].video_decode_ms:.1f} "
                     f"ms, preprocess {rows[0].preprocess_ms:.1f} ms")


@app.command()
def batch(
    input_path: Annotated[str, typer.Argument(
        metavar="input", help='JSON lines {"id", "video", "question"}, optionally '
        '"options" (multiple choice) and "answer" (expected); - reads stdin.')],
    out: Annotated[str, typer.Option("--out", help="Results, one JSON line per input line "
                                     "(- for stdout).")],
    ratio: RatioOption = CompressionOptions.ratio,
    method: MethodOption = CompressionOptions.method,
    model: ModelOption = DEFAULT_MODEL,
    frames: FramesOption = SamplingOptions.frames,
    fps: FpsOption = None,
    max_frames: MaxFramesOption = SamplingOptions.max_frames,
    min_pixels: MinPixelsOption = None,
    max_pixels: MaxPixelsOption = None,
    max_new_tokens: MaxNewTokensOption = GenerationOptions.max_new_tokens,
    batch_size: Annotated[int, typer.Option(help="Items per generate call.")] = 1,
    prefetch: Annotated[int | None, typer.Option(
        help="Items decoded and preprocessed ahead on CPU threads while the model answers the "
        "current batch; 0 = no overlap. Default: 2 x --batch-size.", show_default=False)] = None,
    resume: Annotated[bool, typer.Option(help="Continue an earlier --out file: skip the ids "
                                         "already in it.")] = False,
    reuse: Annotated[bool, typer.Option(
        "--reuse/--no-reuse", help="Answer all the questions about one video from one "
        "decode, one encoding and one prefill of its prompt prefix (records then come grouped "
        "by video); --no-reuse answers each line on its own, in input order.")] = True,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    attn: AttnOption = "auto",
    device_map: DeviceMapOption = None,
    seed: Annotated[int, typer.Option(help="Seed for random selection.")] = 0,
    feature_cache: FeatureCacheOption = None,
    debug: DebugOption = False,
) -> None:
    """Answer the questions of a JSONL file with one model load, writing JSON lines."""
    with cli_errors(debug):
        options = BatchOptions(
            SamplingOptions(frames=frames, fps=fps, max_frames=max_frames,
                            min_pixels=min_pixels, max_pixels=max_pixels),
            CompressionOptions(ratio=ratio, method=method, seed=seed),
            GenerationOptions(max_new_tokens=max_new_tokens, seed=seed), batch_size, prefetch,
            reuse)
        check_batch_options(options)
        items = read_input(input_path)
        done = prepare_output(out, resume, input_path)
        engine = _load_engine(model, device, dtype, attn, device_map,
                              feature_cache=feature_cache)
        todo = len(pending_items(items, done))
        with ResultWriter.open(out) as writer, progress_bar(stderr, todo) as on_record:
            summary = run_batch(engine, items, options, writer, done, on_record)
        stderr.print(summary.render(), highlight=False, markup=False)


cache_app = typer.Typer(no_args_is_help=True, help="Show or clear the feature cache.")
app.add_typer(cache_app, name="cache")
CacheFolderOption = Annotated[Path | None, typer.Option(
    "--feature-cache", envvar=FEATURE_CACHE_VARIABLE, show_envvar=True,
    help="The feature cache folder.")]


def _cache_folder(folder: Path | None) -> FeatureCache:
    if folder is None:
        raise InputError(f"--feature-cache: give the cache folder (or set "
                         f"{FEATURE_CACHE_VARIABLE})")
    return _feature_cache(folder)


@cache_app.command("info")
def cache_info(folder: CacheFolderOption = None,
               json_output: Annotated[bool, typer.Option("--json")] = False,
               debug: DebugOption = False) -> None:
    """How many entries the feature cache holds and their size."""
    with cli_errors(debug):
        cache = _cache_folder(folder)
        usage = cache.usage()
        if json_output:
            _print_json({"folder": str(cache.directory), "entries": usage.entries,
                         "bytes": usage.bytes})
            return
        stdout.print(f"{cache.directory}: {usage.entries} entries, {megabytes(usage.bytes)}",
                     markup=False, highlight=False)


@cache_app.command("clear")
def cache_clear(folder: CacheFolderOption = None, debug: DebugOption = False) -> None:
    """Remove every entry of the feature cache."""
    with cli_errors(debug):
        cache = _cache_folder(folder)
        removed = cache.clear()
        stdout.print(f"{cache.directory}: removed {removed.entries} entries, "
                     f"{megabytes(removed.bytes)}", markup=False, highlight=False)


@app.command()
def models(json_output: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the supported model families, recommended checkpoints and random-weight presets."""
    presets = {f"{RANDOM_PREFIX}{name}": preset_source(name) for name in preset_names()}
    if json_output:
        _print_json({"default": DEFAULT_MODEL, "families": [
            {"model_type": kind, "family": label, "recommended": list(checkpoints),
             "options": notes}
            for kind, (label, checkpoints, notes) in SUPPORTED_MODEL_TYPES.items()],
            "random_presets": presets})
        return
    table = Table(title=f"Supported families (default: {DEFAULT_MODEL})", title_justify="left")
    table.add_column("family")
    table.add_column("config model_type")
    table.add_column("recommended checkpoints")
    table.add_column("how it runs (every family takes every method, ratio, batch and reuse)")
    for kind, (label, checkpoints, notes) in SUPPORTED_MODEL_TYPES.items():
        table.add_row(label, kind, "\n".join(checkpoints), notes)
    stdout.print(table)
    stdout.print("Random-weight presets (real architecture, no download, meaningless answers; "
                 "for timing): " + ", ".join(f"{name} ({source})"
                                            for name, source in presets.items()))


@app.command()
def info(
    video: Annotated[Path, typer.Argument(help="Video file.")],
    json_output: Annotated[bool, typer.Option("--json")] = False,
    debug: DebugOption = False,
) -> None:
    """Show frames, fps, duration, size and codec as the decoder sees them."""
    with cli_errors(debug):
        details = probe(video)
        if json_output:
            _print_json(asdict(details))
            return
        table = Table(show_header=False, title=str(video), title_justify="left")
        for key, value in asdict(details).items():
            table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
        stdout.print(table)


def main() -> None:
    app()
