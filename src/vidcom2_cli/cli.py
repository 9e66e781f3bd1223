"""The ``vidcom2`` command: parse options, call the engine, render the result.

Exit codes: 0 ok, 2 bad usage or bad input (one line on stderr), 1 runtime failure.
A traceback is shown only with ``--debug``.

torch and transformers are imported only by the commands that run a model (``_heavy``):
``--help``, ``models``, ``info`` and option errors answer without them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__
from .catalog import (
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_METHOD,
    DEFAULT_MODEL,
    DEFAULT_NUM_FRAMES,
    DEFAULT_RATIO,
    FEATURE_CACHE_VARIABLE,
    RANDOM_PREFIX,
    SUPPORTED_MODEL_TYPES,
    preset_names,
    preset_source,
)
from .cli_support import (
    HubUnreachable,
    OptionError,
    Terminated,
    check_batch_numbers,
    check_device,
    check_generation_options,
    check_model_source,
    check_numbers,
    check_output_modes,
    check_sampling_options,
    library_logs,
    looks_like_address,
    output_records,
    parse_method_options,
    parse_ratios,
    rename_option,
    sigterm_as_interrupt,
    whole_output_line,
)
from .errors import VideoError, first_line

if TYPE_CHECKING:  # imported for real by _heavy(), on first use
    import numpy as np

    from .batch.input import count_lines, read_input, stream_input
    from .batch.local import BatchOptions, check_batch_options, run_batch
    from .batch.output import ResultWriter, pending_items, prepare_output
    from .batch.progress import BatchSummary, progress_bar
    from .batch.ray import RayOptions, check_ray_options, import_ray, ray_workers, run_ray_batch
    from .bench import check_bench_options, parse_floats, run_bench
    from .engine import Engine
    from .errors import InputError
    from .feature_cache import FeatureCache
    from .heatmap import save_contact_sheet
    from .models import LoadOptions
    from .models.base import PrefixCache
    from .options import (
        CompressionOptions,
        GenerationOptions,
        SamplingOptions,
        check_options,
        check_sampling,
    )
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
    from .video import load_video
    from .work import Answer, Request, VideoContext


def _heavy() -> None:
    """Import the modules that need torch and transformers (seconds), into this module."""
    global BatchOptions, BatchSummary, ResultWriter, check_batch_options, pending_items
    global prepare_output, progress_bar, read_input, run_batch, count_lines, stream_input
    global check_bench_options, parse_floats, run_bench
    global CompressionOptions, Engine, GenerationOptions, InputError, Request, SamplingOptions
    global Answer, VideoContext, FeatureCache, PrefixCache, load_video
    global check_options, check_sampling, save_contact_sheet, LoadOptions
    global RayOptions, check_ray_options, import_ray, ray_workers, run_ray_batch
    global RANDOM_WEIGHTS_NOTE, answer_to_json, bench_rows_to_json, render_answer, render_bench
    global chat_ready_line, megabytes, question_footer, render_question_answer, render_summary
    from .batch.input import count_lines, read_input, stream_input
    from .batch.local import BatchOptions, check_batch_options, run_batch
    from .batch.output import ResultWriter, pending_items, prepare_output
    from .batch.progress import BatchSummary, progress_bar
    from .batch.ray import RayOptions, check_ray_options, import_ray, ray_workers, run_ray_batch
    from .bench import check_bench_options, parse_floats, run_bench
    from .engine import Engine
    from .errors import InputError
    from .feature_cache import FeatureCache
    from .heatmap import save_contact_sheet
    from .models import LoadOptions
    from .models.base import PrefixCache
    from .options import (
        CompressionOptions,
        GenerationOptions,
        SamplingOptions,
        check_options,
        check_sampling,
    )
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
    from .video import load_video
    from .work import Answer, Request, VideoContext


app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False)
# Pipes and files get a wide fixed width instead of rich's 80 columns, so tables do not wrap.
stdout = Console() if sys.stdout.isatty() else Console(width=160)
stderr = Console(stderr=True)


def _bad_input(error: BaseException) -> bool:
    """Bad usage or input (exit 2): the error types of modules not imported yet cannot occur."""
    kinds: list[type] = [VideoError, OptionError]
    for module, name in (("vidcom2_cli.engine", "InputError"),
                         ("vidcom2_cli.models.loading", "ModelLoadError"),
                         ("vidcom2_cli.evaluation.common", "DatasetError")):
        if module in sys.modules:
            kinds.append(getattr(sys.modules[module], name))
    return isinstance(error, tuple(kinds))


ModelOption = Annotated[str, typer.Option("--model", "-m", envvar="VIDCOM2_MODEL",
                                          help="Hub id, local checkpoint "
                                          "directory, or random:NAME for a random-weight "
                                          "preset (see `vidcom2 models`).")]
DeviceOption = Annotated[str, typer.Option(envvar="VIDCOM2_DEVICE",
                                           help="auto, cpu, cuda, cuda:1, ...")]
DtypeOption = Annotated[str, typer.Option(envvar="VIDCOM2_DTYPE",
                                          help="auto (bf16 on an Ampere+ GPU, else fp16; fp32 on "
                                          "CPU), bf16, fp16, fp32.")]
AttnOption = Annotated[str, typer.Option("--attn", envvar="VIDCOM2_ATTN",
                                         help="auto (flash_attention_2 where it can "
                                         "run, else sdpa), flash_attention_2, sdpa, eager.")]
DeviceMapOption = Annotated[str | None, typer.Option(help="Spread the model over several GPUs, "
                                                     "e.g. 'auto'.")]
FramesOption = Annotated[int, typer.Option(envvar="VIDCOM2_FRAMES",
                                           help="Frames sampled evenly over the whole video.")]
FpsOption = Annotated[float | None, typer.Option(envvar="VIDCOM2_FPS",
                                                 help="Sample a frame every 1/FPS seconds of "
                                                 "the video instead (capped by --max-frames).")]
MaxFramesOption = Annotated[int, typer.Option(envvar="VIDCOM2_MAX_FRAMES",
                                              help="Cap on frames when sampling by --fps.")]
MinPixelsOption = Annotated[int | None, typer.Option(help="Qwen families: smallest area of a "
                                                     "frame in pixels (default: the family's).")]
MaxPixelsOption = Annotated[int | None, typer.Option(help="Qwen families: largest area of a "
                                                     "frame in pixels (default: the family's).")]
DebugOption = Annotated[bool, typer.Option(help="Show tracebacks and library logs.")]
RatioOption = Annotated[float, typer.Option(envvar="VIDCOM2_RATIO",
                                             help="Fraction of video tokens to keep, in (0, 1].")]
MethodOption = Annotated[str, typer.Option(envvar="VIDCOM2_METHOD",
                                           help="Compressor: vidcom2, fastvid, holitom, "
                                           "visionzip, dycoke, random, uniform, each +fca "
                                           "(see `vidcom2 methods`).")]
MethodSettingOption = Annotated[list[str] | None, typer.Option(
    "--method-option", metavar="NAME=VALUE",
    help="Set one of the method's hyperparameters (repeatable), e.g. tau=0.8; "
    "`vidcom2 methods` lists them with their defaults per family.")]
MaxNewTokensOption = Annotated[int, typer.Option(envvar="VIDCOM2_MAX_NEW_TOKENS",
                                                 help="Longest answer, in tokens.")]
SampleOption = Annotated[bool, typer.Option(help="Sample instead of greedy decoding.")]
TemperatureOption = Annotated[float | None, typer.Option(help="With --sample.")]
TopPOption = Annotated[float | None, typer.Option(help="With --sample.")]
FeatureCacheOption = Annotated[Path | None, typer.Option(
    envvar=FEATURE_CACHE_VARIABLE, show_envvar=True,
    help="Keep the vision encoder's output of each video in this folder, keyed by the file's "
    "content, the model and the sampling: a later run on the same video (another question, "
    "ratio or method) skips decoding and the encoder. Nothing is cached without it.")]


def _version(value: bool) -> None:
    if value:
        print(f"vidcom2-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Ask a video LLM about a video, with VidCom2 visual-token compression.

    Environment defaults (options on the command line win): VIDCOM2_MODEL,
    VIDCOM2_DEVICE, VIDCOM2_DTYPE, VIDCOM2_ATTN, VIDCOM2_FRAMES, VIDCOM2_FPS,
    VIDCOM2_MAX_FRAMES, VIDCOM2_RATIO, VIDCOM2_METHOD, VIDCOM2_MAX_NEW_TOKENS,
    VIDCOM2_FEATURE_CACHE.
    """


@contextmanager
def cli_errors(debug: bool) -> Iterator[None]:
    """Turn failures into one stderr line and an exit code (tracebacks only with --debug).

    Library log output reaches stderr only with --debug; SIGTERM stops a command as Ctrl-C
    does."""
    library_logs(show=debug)
    try:
        with sigterm_as_interrupt():
            yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        stderr.print("interrupted")
        raise typer.Exit(130) from None
    except HubUnreachable as error:
        if debug:
            raise
        _print_error(str(error))
        raise typer.Exit(1) from None
    except Exception as error:
        if debug:
            raise
        if _bad_input(error):
            _print_error(first_line(error))
            raise typer.Exit(2) from None
        _print_error(_runtime_message(error))
        raise typer.Exit(1) from None


def _print_error(message: str) -> None:
    """One line, never read as rich markup (a path may hold "[/...]")."""
    stderr.print(Text.assemble(("error:", "red"), " ", message), highlight=False,
                 soft_wrap=True)


def _runtime_message(error: Exception) -> str:
    from .timing import is_out_of_memory

    if is_out_of_memory(error):
        return ("out of memory: lower --frames, lower --ratio, or use a smaller --model "
                "(or a smaller --batch-size in batch mode)")
    return (f"{type(error).__name__}: {first_line(error)} (run again with --debug for the "
            "traceback)")


def _load_engine(model: str, device: str, dtype: str, attn: str, device_map: str | None,
                 quiet: bool = False, feature_cache: Path | None = None) -> Engine:
    check_model_source(model, RANDOM_PREFIX)
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


def _run_line(engine: Engine) -> str:
    info = engine.run_info()
    return (f"vidcom2-cli {info['version']} · model loaded in {info['model_load_s']:.1f} s · "
            f"{info['device']} {info['dtype']} {info['attention']}")


_STAGE_NAMES = {"feature_cache": "reading the feature cache",
                "video_decode": "decoding the sampled frames", "preprocess": "preprocessing",
                "vision": "running the vision encoder", "compress": "compressing visual tokens",
                "prefill": "prefill (reading the prompt)", "decode": "generating the answer"}


@contextmanager
def _stage_status(show: bool) -> Iterator[Callable[[], None]]:
    """A status line naming the current stage, on a terminal only; yields what stops it (so
    that an answer can stream in its place)."""
    if not (show and stderr.is_terminal):
        yield lambda: None
        return
    from .timing import stage_listener

    with stderr.status("starting ...") as status, stage_listener(
            lambda stage: status.update(f"{_STAGE_NAMES.get(stage, stage)} ...")):
        yield status.stop


def _check_video(video: Path) -> None:
    """Fail fast on a bad video before the (slow) model load."""
    from .video import probe

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
    ratio: RatioOption = DEFAULT_RATIO,
    method: MethodOption = DEFAULT_METHOD,
    method_option: MethodSettingOption = None,
    model: ModelOption = DEFAULT_MODEL,
    frames: FramesOption = DEFAULT_NUM_FRAMES,
    fps: FpsOption = None,
    max_frames: MaxFramesOption = DEFAULT_MAX_FRAMES,
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
        check_numbers(ratio, max_new_tokens)
        check_generation_options(sample, temperature, top_p)
        check_output_modes(json_output, quiet, heatmap)
        check_sampling_options(frames, fps, max_frames)
        check_device(device)
        if not all(question.strip() for question in questions):
            raise OptionError("question: a question is empty")
        _heavy()
        compression = CompressionOptions(ratio=ratio, method=method, seed=seed,
                                         method_options=parse_method_options(method_option))
        generation = GenerationOptions(max_new_tokens=max_new_tokens, do_sample=sample,
                                       temperature=temperature, top_p=top_p, seed=seed)
        sampling = SamplingOptions(frames=frames, fps=fps, max_frames=max_frames,
                                   min_pixels=min_pixels, max_pixels=max_pixels)
        check_options(compression, generation)
        check_sampling(sampling)
        _check_video(video)
        engine = _load_engine(model, device, dtype, attn, device_map, quiet or json_output,
                              feature_cache)
        human = not (quiet or json_output)
        streaming = human and len(questions) == 1 and stdout.is_terminal
        with _stage_status(human and len(questions) == 1) as stop_status:
            if len(questions) == 1:
                on_text = _AnswerStreamer(stop_status) if streaming else None
                answers: Iterable[Answer] = [engine.ask(Request(str(video), questions[0]),
                                                        sampling, compression, generation,
                                                        on_text)]
            else:
                answers = engine.ask_many(str(video), questions, sampling, compression,
                                          generation)
        if streaming:
            if not on_text.started:  # the first token ended the answer
                on_text("(empty answer)")
            sys.stdout.write("\n")
        _print_answers(engine, answers, json_output, quiet, heatmap, sampling,
                       several=len(questions) > 1, streamed=streaming)


class _AnswerStreamer:
    """Writes the answer as it is generated, in place of the status line."""

    def __init__(self, stop_status: Callable[[], None]) -> None:
        self.stop_status = stop_status
        self.started = False

    def __call__(self, text: str) -> None:
        if not self.started:
            self.started = True
            self.stop_status()
            sys.stdout.write("answer: ")
        sys.stdout.write(text)
        sys.stdout.flush()


def _print_answers(engine: Engine, answers: Iterable[Answer], json_output: bool, quiet: bool,
                   heatmap: Path | None = None, sampling: SamplingOptions | None = None,
                   several: bool = False, streamed: bool = False) -> None:
    """Each answer as it comes: a JSON line, the bare answer, or the human report (for
    several questions of one video, the shared summary once and then each answer)."""
    for index, result in enumerate(answers):
        if index == 0 and heatmap is not None:
            save_contact_sheet(heatmap, _frames_of(result, sampling or SamplingOptions()),
                               result.plan, frames_per_unit=result.frames_per_unit)
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
            stdout.print(render_answer(result, with_text=not streamed))
    if not (json_output or quiet):
        stdout.print(_run_line(engine), highlight=False, markup=False)
        if heatmap is not None:
            stdout.print(f"heatmap written to {heatmap}", highlight=False, markup=False)


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
    ratio: RatioOption = DEFAULT_RATIO,
    method: MethodOption = DEFAULT_METHOD,
    method_option: MethodSettingOption = None,
    model: ModelOption = DEFAULT_MODEL,
    frames: FramesOption = DEFAULT_NUM_FRAMES,
    fps: FpsOption = None,
    max_frames: MaxFramesOption = DEFAULT_MAX_FRAMES,
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
        check_numbers(ratio, max_new_tokens)
        check_generation_options(sample, temperature, top_p)
        check_output_modes(json_output, quiet, None)
        check_sampling_options(frames, fps, max_frames)
        check_device(device)
        interactive = sys.stdin.isatty()
        questions = [] if interactive else [line.strip() for line in sys.stdin if line.strip()]
        if not interactive and not questions:
            raise OptionError("stdin: no question (give one question per line)")
        _heavy()
        compression = CompressionOptions(ratio=ratio, method=method, seed=seed,
                                         method_options=parse_method_options(method_option))
        generation = GenerationOptions(max_new_tokens=max_new_tokens, do_sample=sample,
                                       temperature=temperature, top_p=top_p, seed=seed)
        sampling = SamplingOptions(frames=frames, fps=fps, max_frames=max_frames,
                                   min_pixels=min_pixels, max_pixels=max_pixels)
        check_options(compression, generation)
        check_sampling(sampling)
        _check_video(video)
        engine = _load_engine(model, device, dtype, attn, device_map,
                              quiet or json_output or not interactive, feature_cache)
        if not interactive:
            _print_answers(engine, engine.ask_many(str(video), questions, sampling,
                                                   compression, generation),
                           json_output, quiet, several=True)
            return
        with _stage_status(True):
            context, prefix = engine.open(str(video), sampling, compression)
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
        except KeyboardInterrupt as interrupt:
            if isinstance(interrupt, Terminated):  # SIGTERM ends the chat
                raise
            write("\n")
            stderr.print("(answer interrupted)", style="dim")
            continue
        except InputError as error:
            _print_error(first_line(error))
            continue
        write("\n")
        stderr.print(question_footer(answer), style="dim", markup=False, highlight=False)


@app.command()
def bench(
    video: Annotated[Path, typer.Argument(help="Video file.")],
    ratios: Annotated[str, typer.Option(help="Comma-separated keep ratios.")]
    = "1.0,0.5,0.25,0.15,0.1",
    methods: Annotated[str, typer.Option(help="Comma-separated methods, e.g. vidcom2,fastvid,"
                                         "holitom,visionzip,dycoke (see `vidcom2 methods`).")]
    = "vidcom2,random",
    method_option: MethodSettingOption = None,
    question: Annotated[str, typer.Option(help="Question asked at every setting.")]
    = "Describe what happens in this video.",
    repeats: Annotated[int, typer.Option(help="Measured runs per setting (median).")] = 3,
    warmup: Annotated[int, typer.Option(help="Unmeasured runs before each setting.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated at every setting "
                                                "(forced, so every row decodes as many).")]
    = 16,
    model: ModelOption = DEFAULT_MODEL,
    frames: FramesOption = DEFAULT_NUM_FRAMES,
    fps: FpsOption = None,
    max_frames: MaxFramesOption = DEFAULT_MAX_FRAMES,
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
        parse_ratios(ratios)
        check_numbers(None, max_new_tokens)
        check_sampling_options(frames, fps, max_frames)
        check_device(device)
        _heavy()
        ratio_list = parse_floats(ratios, "--ratios")
        method_list = [name.strip() for name in methods.split(",") if name.strip()]
        generation = GenerationOptions(max_new_tokens=max_new_tokens,
                                       min_new_tokens=max_new_tokens)
        sampling = SamplingOptions(frames=frames, fps=fps, max_frames=max_frames,
                                   min_pixels=min_pixels, max_pixels=max_pixels)
        try:
            check_bench_options(ratio_list, method_list, generation, repeats, warmup, seed,
                                parse_method_options(method_option))
        except InputError as error:  # the shared checks name ask's --ratio and --method
            raise rename_option(error, {"--ratio": "--ratios", "--method": "--methods"}) from None
        check_sampling(sampling)
        _check_video(video)
        engine = _load_engine(model, device, dtype, attn, device_map, json_output,
                              feature_cache)
        engine.expect_methods(method_list)  # before prepare: signals are part of a cache key
        prepared = engine.prepare(Request(str(video), question), sampling)
        with stderr.status("benchmarking ...") if not json_output else nullcontext():
            rows = run_bench(engine, prepared, ratio_list, method_list, generation,
                             repeats=repeats, warmup=warmup, seed=seed,
                             method_options=parse_method_options(method_option))
        if json_output:
            _print_json(bench_rows_to_json(rows))
            return
        title = (f"{model} · {len(prepared.video.indices)} frames · "
                 f"{engine.device.type} {str(engine.loaded.dtype).removeprefix('torch.')} "
                 f"{engine.loaded.attention} · median of {repeats}, {max_new_tokens} new tokens")
        if engine.random_weights:
            title += " · RANDOM WEIGHTS"
        title += f" · vidcom2-cli {__version__}, model loaded in {engine.load_seconds:.1f} s"
        stdout.print(render_bench(rows, title))
        stdout.print(f"measured once for all rows: video_decode {rows[0].video_decode_ms:.1f} "
                     f"ms, preprocess {rows[0].preprocess_ms:.1f} ms")
        if rows[0].feature_cache == "hit":
            stdout.print("the vision encoder's output came from the feature cache (vision 0 ms)")


@app.command()
def batch(
    input_path: Annotated[str, typer.Argument(
        metavar="input", help='JSON lines {"id", "video", "question"}, optionally '
        '"options" (multiple choice) and "answer" (expected); - reads stdin.')],
    out: Annotated[str, typer.Option("--out", help="Results, one JSON line per input line "
                                     "(- for stdout).")],
    ratio: RatioOption = DEFAULT_RATIO,
    method: MethodOption = DEFAULT_METHOD,
    method_option: MethodSettingOption = None,
    model: ModelOption = DEFAULT_MODEL,
    frames: FramesOption = DEFAULT_NUM_FRAMES,
    fps: FpsOption = None,
    max_frames: MaxFramesOption = DEFAULT_MAX_FRAMES,
    min_pixels: MinPixelsOption = None,
    max_pixels: MaxPixelsOption = None,
    max_new_tokens: MaxNewTokensOption = DEFAULT_MAX_NEW_TOKENS,
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
    ray_address: Annotated[str | None, typer.Option(
        "--ray", metavar="[ADDRESS]", help="Run on a Ray cluster, one model per worker: local "
        "(the default when no address follows: start Ray on this machine), auto (join the "
        "cluster this machine belongs to), or ray://HOST:PORT. Records then come in the order "
        "they finish (see --ordered).")] = None,
    workers: Annotated[int | None, typer.Option(
        help="With --ray: model workers (default: one per GPU of the cluster, 1 without "
        "GPUs).", show_default=False)] = None,
    gpus_per_worker: Annotated[float | None, typer.Option(
        help="With --ray: GPUs per worker (default 1 where there are GPUs, else 0; 0.5 puts "
        "two workers on one GPU).", show_default=False)] = None,
    chunk: Annotated[int, typer.Option(help="With --ray: items per task (a video's questions "
                                       "stay together).")] = 16,
    ordered: Annotated[bool, typer.Option(help="With --ray: write records in input order "
                                          "(finished ones wait for earlier ones).")] = False,
    debug: DebugOption = False,
) -> None:
    """Answer the questions of a JSONL file with one model load, writing JSON lines."""
    with cli_errors(debug):
        check_numbers(ratio, max_new_tokens)
        check_batch_numbers(batch_size, prefetch)
        check_sampling_options(frames, fps, max_frames)
        check_device(device)
        _heavy()
        options = BatchOptions(
            SamplingOptions(frames=frames, fps=fps, max_frames=max_frames,
                            min_pixels=min_pixels, max_pixels=max_pixels),
            CompressionOptions(ratio=ratio, method=method, seed=seed,
                               method_options=parse_method_options(method_option)),
            GenerationOptions(max_new_tokens=max_new_tokens, seed=seed), batch_size, prefetch,
            reuse)
        check_batch_options(options)
        if ray_address is not None:
            ray_options = RayOptions(ray_address, workers, gpus_per_worker, chunk, ordered)
            summary = _ray_batch(input_path, out, resume, options, ray_options, model,
                                 LoadOptions(device=device, dtype=dtype, attention=attn,
                                             device_map=device_map), feature_cache)
            _fail_if_all_failed(summary)
            return
        if workers is not None or gpus_per_worker is not None or ordered:
            raise InputError("--workers/--gpus-per-worker/--ordered: only with --ray")
        items = read_input(input_path)
        done = prepare_output(out, resume, input_path)
        engine = _load_engine(model, device, dtype, attn, device_map,
                              feature_cache=feature_cache)
        todo = len(pending_items(items, done))
        with ResultWriter.open(out) as writer, progress_bar(stderr, todo) as on_record:
            summary = run_batch(engine, items, options, writer, done, on_record)
        stderr.print(summary.render(), highlight=False, markup=False)
        stderr.print(_run_line(engine), highlight=False, markup=False, soft_wrap=True)
        if resume and done and out != "-":  # the closing line covers the whole file too
            whole = BatchSummary(total=len(items))
            for record in output_records(out):
                whole.add(record)
            stderr.print(f"whole output {out}: " + whole_output_line(whole), highlight=False,
                         markup=False, soft_wrap=True)
        _fail_if_all_failed(summary)


def _fail_if_all_failed(summary: BatchSummary) -> None:
    if summary.processed and summary.answered == 0:
        _print_error(f"every one of the {summary.processed} items failed (see the error "
                     "field of each record)")
        raise typer.Exit(1)


def _ray_batch(input_path: str, out: str, resume: bool, options: BatchOptions,
               ray_options: RayOptions, model: str, load_options: LoadOptions,
               feature_cache: Path | None) -> BatchSummary:
    _check_ray(ray_options, model)
    items = stream_input(input_path)
    done = prepare_output(out, resume, input_path)
    total = None if input_path == "-" else max(count_lines(Path(input_path)) - sum(
        done.values()), 0)
    with ResultWriter.open(out) as writer:
        summary = _on_ray(items, writer, done, options, ray_options, model, load_options,
                          feature_cache, total)
    stderr.print(summary.render(), highlight=False, markup=False)
    return summary


def _check_ray(ray_options: RayOptions, model: str) -> None:
    """What can be refused before Ray starts: its options, a missing extra, a missing model."""
    check_ray_options(ray_options)
    import_ray()  # one line saying which extra to install, before anything else
    check_model_source(model, RANDOM_PREFIX)


def _on_ray(items: Iterable, sink: object, done: object, options: BatchOptions,
            ray_options: RayOptions, model: str, load_options: LoadOptions,
            feature_cache: Path | None, total: int | None) -> BatchSummary:
    """Run ``items`` on Ray workers (options and model already checked), records to ``sink``."""
    cache = None if feature_cache is None else str(
        _feature_cache(feature_cache).directory.expanduser().resolve())
    with ExitStack() as stack:
        with stderr.status(f"starting Ray workers for {model} ..."):
            workers = stack.enter_context(ray_workers(ray_options, model, load_options, cache,
                                                      options))
        on_record = stack.enter_context(progress_bar(stderr, total))
        return run_ray_batch(workers, items, options, ray_options, sink, done, on_record)


@app.command("eval")
def eval_(
    task: Annotated[str, typer.Argument(help="videomme, mvbench (all 20 subtasks), "
                                        "mvbench_<subtask>, mlvu (dev) or longvideobench (val, "
                                        "video only).")],
    data: Annotated[Path, typer.Option("--data", metavar="DIR", help="The dataset as its "
                                       "publishers distribute it (see the README).")],
    out: Annotated[str, typer.Option("--out", help="Results, one JSON line per question and "
                                     "setting (- for stdout).")],
    limit: Annotated[int | None, typer.Option(help="At most N questions (per subtask for "
                                              "mvbench).", show_default=False)] = None,
    ratios: Annotated[str, typer.Option(help="Comma-separated ratios to sweep; with 1.0 the "
                                        "summary gives each score as % of it.")
                      ] = "1.0,0.25,0.15",
    methods: Annotated[str, typer.Option(help="Comma-separated compression methods to sweep "
                                         "(any name `vidcom2 methods` lists).")
                       ] = DEFAULT_METHOD,
    method_option: MethodSettingOption = None,
    prompt_variant: Annotated[str, typer.Option(
        help="The task's per-model prompt (lmms-eval's lmms_eval_specific_kwargs): auto "
        "(qwen3_vl for Video-MME on Qwen3-VL, else default), default, or a model key of the "
        "task's yaml.")] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")
                           ] = False,
    model: ModelOption = DEFAULT_MODEL,
    frames: FramesOption = DEFAULT_NUM_FRAMES,
    fps: FpsOption = None,
    max_frames: MaxFramesOption = DEFAULT_MAX_FRAMES,
    min_pixels: MinPixelsOption = None,
    max_pixels: MaxPixelsOption = None,
    max_new_tokens: Annotated[int | None, typer.Option(
        help="Longest answer (default: the task's, 16 or 32 tokens).", show_default=False)
                              ] = None,
    batch_size: Annotated[int, typer.Option(help="Items per generate call.")] = 1,
    prefetch: Annotated[int | None, typer.Option(
        help="Videos decoded ahead on CPU threads; 0 = no overlap. Default: 2 x --batch-size.",
        show_default=False)] = None,
    resume: Annotated[bool, typer.Option(help="Continue an earlier --out file: skip the "
                                         "questions and settings already in it.")] = False,
    reuse: Annotated[bool, typer.Option(
        "--reuse/--no-reuse", help="One decode and encoding per video for every question and "
        "setting (--no-reuse: each question and setting on its own).")] = True,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    attn: AttnOption = "auto",
    device_map: DeviceMapOption = None,
    seed: Annotated[int, typer.Option(help="Seed for random selection.")] = 0,
    feature_cache: FeatureCacheOption = None,
    ray_address: Annotated[str | None, typer.Option(
        "--ray", metavar="[ADDRESS]", help="Run on a Ray cluster, as batch --ray.")] = None,
    workers: Annotated[int | None, typer.Option(help="With --ray: model workers.",
                                                show_default=False)] = None,
    gpus_per_worker: Annotated[float | None, typer.Option(help="With --ray: GPUs per worker.",
                                                          show_default=False)] = None,
    chunk: Annotated[int, typer.Option(help="With --ray: items per task.")] = 16,
    debug: DebugOption = False,
) -> None:
    """Score a model on Video-MME, MVBench, MLVU or LongVideoBench as lmms-eval does, over a
    sweep of compression ratios and methods, with a summary table."""
    with cli_errors(debug):
        from .evaluation import parse_task, read_questions, resolve_variant

        chosen_task, subtask = parse_task(task)
        ratio_list = parse_ratios(ratios)
        method_list = [name.strip() for name in methods.split(",") if name.strip()]
        if not ratio_list or not method_list:
            raise OptionError("--ratios/--methods: give at least one of each")
        if limit is not None and limit < 1:
            raise OptionError(f"--limit: must be at least 1, got {limit}")
        check_numbers(None, max_new_tokens or 1)
        check_batch_numbers(batch_size, prefetch)
        check_sampling_options(frames, fps, max_frames)
        check_device(device)
        resolve_variant(chosen_task, prompt_variant, None)  # refuses an unknown one now
        questions = read_questions(chosen_task, subtask, data, "default", limit)
        _heavy()
        from .evaluation.summary import render as render_eval
        from .evaluation.summary import summarize
        from .evaluation.sweep import ScoringSink, settings, sweep_items, with_method_options

        for name in method_list:  # any name of the registry; an unknown one lists them
            try:
                check_options(CompressionOptions(method=name), GenerationOptions())
            except InputError as error:
                raise rename_option(error, {"--method": "--methods"}) from None
        chosen = with_method_options(settings(ratio_list, method_list),
                                     parse_method_options(method_option))
        options = BatchOptions(
            SamplingOptions(frames=frames, fps=fps, max_frames=max_frames,
                            min_pixels=min_pixels, max_pixels=max_pixels),
            CompressionOptions(ratio=chosen[0].ratio, method=chosen[0].method, seed=seed),
            GenerationOptions(max_new_tokens=max_new_tokens or chosen_task.max_new_tokens,
                              seed=seed),
            batch_size, prefetch, reuse)
        check_batch_options(options)
        done = prepare_output(out, resume, str(data))
        engine = ray_options = None
        if ray_address is None:
            if workers is not None or gpus_per_worker is not None:
                raise InputError("--workers/--gpus-per-worker: only with --ray")
            engine = _load_engine(model, device, dtype, attn, device_map,
                                  feature_cache=feature_cache)
            model_type = engine.loaded.model_type
        else:
            ray_options = RayOptions(ray_address, workers, gpus_per_worker, chunk, False)
            _check_ray(ray_options, model)
            from .models.presets import checkpoint_model_type

            model_type = checkpoint_model_type(model)
        variant = resolve_variant(chosen_task, prompt_variant, model_type, model)
        if variant != "default":  # the questions were read with the default prompts
            questions = read_questions(chosen_task, subtask, data, variant, limit)
        items, index = sweep_items(questions, chosen, seed)
        with ResultWriter.open(out) as writer:
            sink = ScoringSink(writer, index)
            todo = len(pending_items(items, done))
            if engine is not None:
                with progress_bar(stderr, todo) as on_record:
                    summary = run_batch(engine, items, options, sink, done, on_record)
            else:
                summary = _on_ray(items, sink, done, options, ray_options, model,
                                  LoadOptions(device=device, dtype=dtype, attention=attn,
                                              device_map=device_map), feature_cache, todo)
        stderr.print(summary.render(), highlight=False, markup=False)
        records = sink.records
        if out != "-":  # the whole file: earlier runs' records too (--resume)
            records = [record for record in output_records(out)
                       if str(record.get("id")) in index and "setting" in record]
        result = summarize(records, chosen_task.name, [setting.label for setting in chosen])
        console = stdout if out != "-" else Console(stderr=True, width=160)
        if json_output:
            if out == "-":
                console.print_json(json.dumps(result))
            else:
                _print_json(result)
        else:
            console.print(render_eval(result))
        _fail_if_all_failed(summary)


cache_app = typer.Typer(no_args_is_help=True, help="Show or clear the feature cache.")
app.add_typer(cache_app, name="cache")
CacheFolderOption = Annotated[Path | None, typer.Option(
    "--feature-cache", envvar=FEATURE_CACHE_VARIABLE, show_envvar=True,
    help="The feature cache folder.")]


def _cache_folder(folder: Path | None) -> FeatureCache:
    if folder is None:
        raise OptionError(f"--feature-cache: give the cache folder (or set "
                          f"{FEATURE_CACHE_VARIABLE})")
    _heavy()
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
def methods(json_output: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the compression methods: what each keeps, its budget rule, the vision signals it
    reads, its hyperparameters (defaults per family profile) and where it departs from its
    official code."""
    from .compression import METHODS, PROFILES, SIGNALS

    rows = [{"name": name, "keeps": method.spec.keeps, "budget": method.budget,
             "signals": list(method.signals),
             "options": {profile: method.spec.options_for(profile) for profile in PROFILES
                         if method.spec.defaults},
             "option_help": dict(method.spec.option_help), "notes": method.spec.notes}
            for name, method in METHODS.items()]
    if json_output:
        _print_json({"methods": rows, "signals": SIGNALS, "profiles": list(PROFILES)})
        return
    table = Table(title="Compression methods (--method NAME, --method-option NAME=VALUE)",
                  title_justify="left", show_lines=True)
    for column in ("method", "keeps; budget", "vision signals", "options (defaults)", "notes"):
        table.add_column(column)
    for row in rows:
        table.add_row(Text(row["name"]), Text(f"{row['keeps']}; {row['budget']}"),
                      Text(", ".join(row["signals"]) or "none"),
                      Text(_option_defaults(row["options"])), Text(row["notes"]))
    stdout.print(table)
    stdout.print(Text("Signals: " + "; ".join(f"{name}: {text}"
                                              for name, text in SIGNALS.items())))
    stdout.print(Text("Profiles: onevision = LLaVA-OneVision, llava_video = LLaVA-NeXT-Video; "
                      "every other family uses the qwen defaults."))


def _option_defaults(options: dict[str, dict[str, float]]) -> str:
    """Defaults per profile, written once where every profile has the same."""
    if not options:
        return "none"
    def listed(values: dict[str, float]) -> str:
        return ", ".join(f"{name}={value:g}" for name, value in values.items())

    if len({listed(values) for values in options.values()}) == 1:
        return listed(next(iter(options.values())))
    return "\n".join(f"{profile}: {listed(values)}" for profile, values in options.items())


@app.command()
def info(
    video: Annotated[Path, typer.Argument(help="Video file.")],
    json_output: Annotated[bool, typer.Option("--json")] = False,
    debug: DebugOption = False,
) -> None:
    """Show frames, fps, duration, size and codec as the decoder sees them."""
    with cli_errors(debug):
        from .video import probe

        details = probe(video)
        if json_output:
            _print_json(asdict(details))
            return
        table = Table(show_header=False, title=str(video), title_justify="left")
        for key, value in asdict(details).items():
            table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
        stdout.print(table)


def main() -> None:
    """The ``vidcom2`` entry point: a usage error (unknown option, missing argument, a value of
    the wrong type) is one line naming it too, not click's usage box."""
    try:
        code = app(args=with_ray_address(sys.argv[1:]), standalone_mode=False)
    except _usage_error() as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # bare `vidcom2 cmd`: its help
            error.show()
            sys.exit(2)
        context = getattr(error, "ctx", None)
        hint = f" (see '{context.command_path} --help')" if context is not None else ""
        _print_error(f"{error.format_message()}{hint}")
        sys.exit(2)
    except typer.Abort:
        stderr.print("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error() -> type[Exception]:
    """click's UsageError, from typer's own copy of click or from click itself."""
    return next(kind for kind in typer.BadParameter.__mro__ if kind.__name__ == "UsageError")


def with_ray_address(argv: list[str]) -> list[str]:
    """``--ray`` takes an optional address: without one (the next word is an option, the
    input, or nothing) it means ``--ray local``."""
    expanded = []
    for index, arg in enumerate(argv):
        expanded.append(arg)
        following = argv[index + 1] if index + 1 < len(argv) else None
        if arg == "--ray" and (following is None or not looks_like_address(following)):
            expanded.append("local")
    return expanded
