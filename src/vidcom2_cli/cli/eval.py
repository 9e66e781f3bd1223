"""``vidcom2 eval TASK --data DIR --out RESULTS``: a benchmark scored as lmms-eval scores it,
over a sweep of ratios and methods."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..catalog import DEFAULT_MAX_FRAMES, DEFAULT_METHOD, DEFAULT_MODEL, DEFAULT_NUM_FRAMES
from ..errors import InputError
from . import console
from .app import app
from .batch import check_ray, on_ray, print_ray_run_line
from .checks import (
    OptionError,
    check_batch_numbers,
    check_load_options,
    check_numbers,
    check_sampling_options,
    output_records,
    parse_method_options,
    parse_ratios,
    rename_option,
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
    MaxPixelsOption,
    MethodSettingOption,
    MinPixelsOption,
    ModelOption,
    SelectionSeedOption,
)
from .runtime import load_engine, preflight, sampling_options


@app.command("eval")
def eval_(
    task: Annotated[str, typer.Argument(help="videomme, mvbench (all 20 subtasks), "
                                        "mvbench_<subtask>, mlvu (dev) or longvideobench (val, "
                                        "video only).")],
    data: Annotated[Path, typer.Option("--data", metavar="DIR", help="The dataset as its "
                                       "publishers distribute it (see docs/eval.md).")],
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
        help="The task's per-model prompt (lmms-eval's per-model task keywords): auto "
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
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an earlier --out file: skip the "
        "questions and settings already in it.")] = False,
    reuse: Annotated[bool, typer.Option(
        "--reuse/--no-reuse", help="One decode and encoding per video for every question and "
        "setting (--no-reuse: each question and setting on its own).")] = True,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    attn: AttnOption = "auto",
    device_map: DeviceMapOption = None,
    seed: SelectionSeedOption = 0,
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
    with console.cli_errors(debug, json_output):
        from ..evaluation import parse_task, read_questions, resolve_variant

        chosen_task, subtask = parse_task(task)
        ratio_list = parse_ratios(ratios)
        method_list = [name.strip() for name in methods.split(",") if name.strip()]
        if not ratio_list or not method_list:
            raise OptionError("--ratios/--methods: give at least one of each")
        if limit is not None and limit < 1:
            raise OptionError(f"--limit: must be at least 1, got {limit}")
        check_numbers(None, max_new_tokens or 1)
        check_batch_numbers(batch_size, prefetch)
        check_sampling_options(frames, fps, max_frames, min_pixels, max_pixels)
        check_load_options(device, dtype, attn)
        resolve_variant(chosen_task, prompt_variant, None)  # refuses an unknown one now
        questions = read_questions(chosen_task, subtask, data, "default", limit)
        preflight(model, method_list, None, "--methods")
        from ..evaluation.missing import missing_videos_line

        missing = missing_videos_line(questions, data, out)
        if missing:  # named now, before the model loads; each becomes an error record
            console.print_plain(missing, to_stderr=True)
        from ..batch.local import BatchOptions, check_batch_options, run_batch
        from ..batch.output import ResultWriter, pending_items, prepare_output
        from ..batch.progress import progress_bar
        from ..batch.ray_options import RayOptions
        from ..evaluation.summary import render as render_eval
        from ..evaluation.summary import summarize
        from ..evaluation.sweep import ScoringSink, settings, sweep_items, with_method_options
        from ..models import LoadOptions
        from ..options import CompressionOptions, GenerationOptions, check_options

        for name in method_list:  # any name of the registry; an unknown one lists them
            try:
                check_options(CompressionOptions(method=name), GenerationOptions())
            except InputError as error:
                raise rename_option(error, {"--method": "--methods"}) from None
        chosen = with_method_options(settings(ratio_list, method_list),
                                     parse_method_options(method_option))
        options = BatchOptions(
            sampling_options(frames, fps, max_frames, min_pixels, max_pixels),
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
            engine = load_engine(model, device, dtype, attn, device_map,
                                 feature_cache=feature_cache)
            model_type = engine.loaded.model_type
        else:
            ray_options = RayOptions(ray_address, workers, gpus_per_worker, chunk, False)
            check_ray(ray_options)
            from ..models.presets import checkpoint_model_type

            model_type = checkpoint_model_type(model)
        variant = resolve_variant(chosen_task, prompt_variant, model_type, model)
        if variant != "default":  # the questions were read with the default prompts
            questions = read_questions(chosen_task, subtask, data, variant, limit)
        items, index = sweep_items(questions, chosen, seed)
        with ResultWriter.open(out) as writer:
            sink = ScoringSink(writer, index)
            todo = len(pending_items(items, done))
            if engine is not None:
                with progress_bar(console.stderr, todo) as on_record:
                    summary = run_batch(engine, items, options, sink, done, on_record)
            else:
                summary = on_ray(items, sink, done, options, ray_options, model,
                                 LoadOptions(device=device, dtype=dtype, attention=attn,
                                             device_map=device_map), feature_cache, todo)
        console.stderr.print(summary.render(), highlight=False, markup=False)
        if engine is None:
            print_ray_run_line(summary)
        records = sink.records
        if out != "-":  # the whole file: earlier runs' records too (--resume)
            records = [record for record in output_records(out)
                       if str(record.get("id")) in index and "setting" in record]
        result = summarize(records, chosen_task.name, [setting.label for setting in chosen])
        summary_console = console.stdout if out != "-" else console.stderr
        if json_output:
            if out == "-":
                summary_console.print_json(json.dumps(result))
            else:
                console.print_json(result)
        else:
            summary_console.print(render_eval(result))
        console.fail_if_all_failed(summary)
