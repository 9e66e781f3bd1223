"""``vidcom2 batch INPUT --out RESULTS``: a JSONL file of questions, on one model or on Ray
workers; also the Ray plumbing ``eval --ray`` shares."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..catalog import (
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_METHOD,
    DEFAULT_MODEL,
    DEFAULT_NUM_FRAMES,
    DEFAULT_RATIO,
    RANDOM_PREFIX,
)
from ..errors import InputError
from . import console
from .app import app
from .checks import (
    check_batch_numbers,
    check_load_options,
    check_method_names,
    check_numbers,
    check_sampling_options,
    output_records,
    parse_method_options,
    whole_output_line,
)
from .options import (
    AttnOption,
    DebugOption,
    DeviceMapOption,
    DeviceOption,
    DtypeOption,
    FeatureCacheOption,
    FpsOption,
    FramesOption,
    MaxFramesOption,
    MaxNewTokensOption,
    MaxPixelsOption,
    MethodOption,
    MethodSettingOption,
    MinPixelsOption,
    ModelOption,
    RatioOption,
    SelectionSeedOption,
    ServerOption,
)
from .runtime import (
    compression_options,
    feature_cache_at,
    load_engine,
    preflight,
    run_line,
    sampling_options,
)

if TYPE_CHECKING:
    from ..batch.local import BatchOptions
    from ..batch.ray import RaySummary
    from ..batch.ray_options import RayOptions
    from ..models import LoadOptions


@app.command()
def batch(
    context: typer.Context,
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
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an earlier --out file: skip the ids "
        "already in it.")] = False,
    reuse: Annotated[bool, typer.Option(
        "--reuse/--no-reuse", help="Answer all the questions about one video from one "
        "decode, one encoding and one prefill of its prompt prefix (records then come grouped "
        "by video); --no-reuse answers each line on its own, in input order.")] = True,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    attn: AttnOption = "auto",
    device_map: DeviceMapOption = None,
    seed: SelectionSeedOption = 0,
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
    ordered: Annotated[bool, typer.Option(
        "--ordered", help="With --ray: write records in input order "
        "(finished ones wait for earlier ones).")] = False,
    server: ServerOption = None,
    concurrency: Annotated[int, typer.Option(help="With --server: items in flight (the server "
                                             "batches them).")] = 8,
    debug: DebugOption = False,
) -> None:
    """Answer the questions of a JSONL file with one model load, writing JSON lines."""
    with console.cli_errors(debug):
        check_numbers(ratio, max_new_tokens)
        check_batch_numbers(batch_size, prefetch)
        check_sampling_options(frames, fps, max_frames, min_pixels, max_pixels)
        check_load_options(device, dtype, attn)
        method_settings = parse_method_options(method_option)
        if server is not None:
            from .remote import batch_on_server

            check_method_names([method])
            batch_on_server(server, context, input_path, out, resume, concurrency,
                            context.params)
            return
        if ray_address is None and (workers is not None or gpus_per_worker is not None
                                    or ordered):
            raise InputError("--workers/--gpus-per-worker/--ordered: only with --ray")
        from ..batch.input import read_input
        from ..batch.output import ResultWriter, pending_items, prepare_output

        # the input and the output are checked before anything heavy is imported
        items = read_input(input_path) if ray_address is None else None
        if items == [] or (items is None and input_path != "-" and not _has_lines(input_path)):
            raise InputError(f"{'stdin' if input_path == '-' else input_path}: no questions in "
                             "it (one JSON object per line)")
        done = prepare_output(out, resume, input_path)
        preflight(model, [method])
        from ..batch.local import BatchOptions, check_batch_options, run_batch
        from ..batch.progress import BatchSummary, progress_bar
        from ..batch.ray_options import RayOptions
        from ..models import LoadOptions
        from ..options import GenerationOptions

        options = BatchOptions(
            sampling_options(frames, fps, max_frames, min_pixels, max_pixels),
            compression_options(ratio, method, seed, method_settings),
            GenerationOptions(max_new_tokens=max_new_tokens, seed=seed), batch_size, prefetch,
            reuse)
        check_batch_options(options)
        if items is None:
            ray_options = RayOptions(ray_address, workers, gpus_per_worker, chunk, ordered)
            summary = _ray_batch(input_path, out, done, options, ray_options, model,
                                 LoadOptions(device=device, dtype=dtype, attention=attn,
                                             device_map=device_map), feature_cache)
            console.fail_if_all_failed(summary)
            return
        engine = load_engine(model, device, dtype, attn, device_map,
                             feature_cache=feature_cache, max_new_tokens=max_new_tokens)
        todo = len(pending_items(items, done))
        stderr = console.stderr
        with ResultWriter.open(out) as writer, progress_bar(stderr, todo) as on_record:
            summary = run_batch(engine, items, options, writer, done, on_record)
        stderr.print(summary.render(), highlight=False, markup=False)
        stderr.print(run_line(engine.run_info()), highlight=False, markup=False, soft_wrap=True)
        if resume and done and out != "-":  # the closing line covers the whole file too
            whole = BatchSummary(total=len(items))
            for record in output_records(out):
                whole.add(record)
            stderr.print(f"whole output {out}: " + whole_output_line(whole), highlight=False,
                         markup=False, soft_wrap=True)
        console.fail_if_all_failed(summary)


def _has_lines(path: str) -> bool:
    """Whether a file holds anything but blank lines (read line by line: it may be large)."""
    try:
        with open(path, "rb") as lines:
            return any(line.strip() for line in lines)
    except OSError:
        return True  # reading it is refused with its own message, where it is read


def _ray_batch(input_path: str, out: str, done: Counter[str], options: BatchOptions,
               ray_options: RayOptions, model: str, load_options: LoadOptions,
               feature_cache: Path | None) -> RaySummary:
    from ..batch.input import count_lines, stream_input
    from ..batch.output import ResultWriter

    check_ray(ray_options)
    items = stream_input(input_path)
    total = None if input_path == "-" else max(count_lines(Path(input_path)) - sum(
        done.values()), 0)
    with ResultWriter.open(out) as writer:
        summary = on_ray(items, writer, done, options, ray_options, model, load_options,
                         feature_cache, total)
    console.stderr.print(summary.render(), highlight=False, markup=False)
    print_ray_run_line(summary)
    return summary


def print_ray_run_line(summary: RaySummary) -> None:
    """The closing line a local run prints, from what ran the workers' first answer."""
    if summary.run:
        console.stderr.print(f"{run_line(summary.run)} · on {len(summary.workers)} Ray "
                             "workers", highlight=False, markup=False, soft_wrap=True)


def check_ray(ray_options: RayOptions) -> None:
    """What can be refused before Ray starts (the model was checked by ``preflight``): its
    options and a missing extra."""
    from ..batch.ray_options import check_ray_options, import_ray

    check_ray_options(ray_options)
    import_ray()  # one line saying which extra to install, before anything else


def on_ray(items: Iterable, sink: object, done: object, options: BatchOptions,
           ray_options: RayOptions, model: str, load_options: LoadOptions,
           feature_cache: Path | None, total: int | None) -> RaySummary:
    """Run ``items`` on Ray workers (options and model already checked), records to ``sink``."""
    from ..batch.progress import progress_bar
    from ..batch.ray import ray_workers, run_ray_batch

    if model.startswith(RANDOM_PREFIX):  # the workers' load does not reach this console
        from ..report import RANDOM_WEIGHTS_NOTE

        console.stderr.print(RANDOM_WEIGHTS_NOTE, style="bold yellow", markup=False,
                             highlight=False)
    cache = None if feature_cache is None else str(
        feature_cache_at(feature_cache).directory.expanduser().resolve())
    with ExitStack() as stack:
        with console.stderr.status(f"starting Ray workers for {model} ..."):
            workers = stack.enter_context(ray_workers(ray_options, model, load_options, cache,
                                                      options))
        on_record = stack.enter_context(progress_bar(console.stderr, total))
        return run_ray_batch(workers, items, options, ray_options, sink, done, on_record)
