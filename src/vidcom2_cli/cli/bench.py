"""``vidcom2 bench VIDEO``: prefill and decode timed at several ratios and methods."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from ..catalog import DEFAULT_MAX_FRAMES, DEFAULT_MODEL, DEFAULT_NUM_FRAMES
from ..errors import InputError
from . import console
from .app import app
from .checks import (
    check_load_options,
    check_numbers,
    check_sampling_options,
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


@app.command()
def bench(
    video: Annotated[Path, typer.Argument(help="Video file.")],
    ratios: Annotated[str, typer.Option(help="Comma-separated keep ratios.")]
    = "1.0,0.5,0.25,0.15,0.1",
    methods: Annotated[str, typer.Option(help="Comma-separated methods, e.g. "
                                         "vidcom2,fastvid,flashvid (see `vidcom2 methods`).")]
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
    seed: SelectionSeedOption = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
    feature_cache: FeatureCacheOption = None,
    debug: DebugOption = False,
) -> None:
    """Measure prefill and decode at several ratios and methods on one video."""
    with console.cli_errors(debug, json_output):
        parse_ratios(ratios)
        check_numbers(None, max_new_tokens)
        check_sampling_options(frames, fps, max_frames, min_pixels, max_pixels)
        check_load_options(device, dtype, attn)
        method_list = [name.strip() for name in methods.split(",") if name.strip()]
        preflight(model, method_list, video, "--methods")
        from ..bench import check_bench_options, parse_floats, run_bench
        from ..options import GenerationOptions, check_sampling
        from ..report import bench_rows_to_json, render_bench
        from ..work import Request

        ratio_list = parse_floats(ratios, "--ratios")
        generation = GenerationOptions(max_new_tokens=max_new_tokens,
                                       min_new_tokens=max_new_tokens)
        sampling = sampling_options(frames, fps, max_frames, min_pixels, max_pixels)
        try:
            check_bench_options(ratio_list, method_list, generation, repeats, warmup, seed,
                                parse_method_options(method_option))
        except InputError as error:  # the shared checks name ask's --ratio and --method
            raise rename_option(error, {"--ratio": "--ratios", "--method": "--methods"}) from None
        check_sampling(sampling)
        engine = load_engine(model, device, dtype, attn, device_map, json_output, feature_cache)
        engine.expect_methods(method_list)  # before prepare: signals are part of a cache key
        prepared = engine.prepare(Request(str(video), question), sampling)
        with console.stderr.status("benchmarking ...") if not json_output else nullcontext():
            rows = run_bench(engine, prepared, ratio_list, method_list, generation,
                             repeats=repeats, warmup=warmup, seed=seed,
                             method_options=parse_method_options(method_option))
        if json_output:
            console.print_json(bench_rows_to_json(rows))
            return
        title = (f"{model} · {len(prepared.video.indices)} frames · "
                 f"{engine.device.type} {str(engine.loaded.dtype).removeprefix('torch.')} "
                 f"{engine.loaded.attention} · median of {repeats}, {max_new_tokens} new tokens")
        if engine.random_weights:
            title += " · RANDOM WEIGHTS"
        title += f" · vidcom2-cli {__version__}, model loaded in {engine.load_seconds:.1f} s"
        stdout = console.stdout
        stdout.print(render_bench(rows, title, stdout.width))
        stdout.print(f"measured once for all rows: video_decode {rows[0].video_decode_ms:.1f} "
                     f"ms, preprocess {rows[0].preprocess_ms:.1f} ms")
        if rows[0].feature_cache == "hit":
            stdout.print("the vision encoder's output came from the feature cache (vision 0 ms)")
