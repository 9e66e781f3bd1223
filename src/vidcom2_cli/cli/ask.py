"""``vidcom2 ask VIDEO QUESTION...``: one or more questions about one video."""

from __future__ import annotations

import sys
from collections.abc import Iterable
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
)
from . import console
from .answers import AnswerStreamer, print_answers
from .app import app
from .checks import (
    OptionError,
    check_generation_options,
    check_load_options,
    check_method_names,
    check_numbers,
    check_output_modes,
    check_sampling_options,
    compression_profile_of,
    parse_method_options,
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
    SampleOption,
    SeedOption,
    ServerOption,
    TemperatureOption,
    TopPOption,
)
from .runtime import (
    answer_options,
    compression_options,
    each_with_status,
    load_engine,
    preflight,
    sampling_options,
    stage_status,
)

if TYPE_CHECKING:
    from ..work import Answer


@app.command()
def ask(
    context: typer.Context,
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
    seed: SeedOption = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object per "
                                              "question, one per line.")] = False,
    heatmap: Annotated[Path | None, typer.Option(help="Write a PNG contact sheet of the frames "
                                                  "with dropped tokens dimmed.")] = None,
    feature_cache: FeatureCacheOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the answers.")] = False,
    server: ServerOption = None,
    debug: DebugOption = False,
) -> None:
    """Answer one or more questions about a video."""
    with console.cli_errors(debug, json_output or quiet):
        check_numbers(ratio, max_new_tokens)
        check_generation_options(sample, temperature, top_p)
        check_output_modes(json_output, quiet, heatmap)
        check_sampling_options(frames, fps, max_frames, min_pixels, max_pixels)
        check_load_options(device, dtype, attn)
        if not all(question.strip() for question in questions):
            raise OptionError("question: a question is empty")
        method_settings = parse_method_options(method_option)
        if server is not None:
            from .remote import ask_on_server

            check_method_names([method])
            ask_on_server(server, context, video, questions, context.params, json_output,
                          quiet, heatmap)
            return
        preflight(model, [method], video)
        from ..options import check_options, check_sampling
        from ..work import Request

        compression = compression_options(ratio, method, seed, method_settings)
        generation = answer_options(max_new_tokens, sample, temperature, top_p, seed)
        sampling = sampling_options(frames, fps, max_frames, min_pixels, max_pixels)
        check_options(compression, generation, compression_profile_of(model))
        check_sampling(sampling)
        engine = load_engine(model, device, dtype, attn, device_map, quiet or json_output,
                             feature_cache, max_new_tokens)
        human = not (quiet or json_output)
        streaming = human and len(questions) == 1 and console.stdout.is_terminal
        with stage_status(human and len(questions) == 1) as stop_status:
            if len(questions) == 1:
                on_text = AnswerStreamer(stop_status) if streaming else None
                answers: Iterable[Answer] = [engine.ask(Request(str(video), questions[0]),
                                                        sampling, compression, generation,
                                                        on_text)]
            else:
                answers = each_with_status(engine.ask_many(
                    str(video), questions, sampling, compression, generation), human)
        if streaming:
            if not on_text.started:  # the first token ended the answer
                on_text("(empty answer)")
            sys.stdout.write("\n")
        print_answers(engine, answers, json_output, quiet, heatmap, sampling,
                      several=len(questions) > 1, streamed=streaming)
