"""``vidcom2 chat VIDEO``: prepare a video once, then answer questions as they are typed."""

from __future__ import annotations

import sys
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
from ..errors import InputError, first_line
from . import console
from .answers import print_answers
from .app import app
from .checks import (
    OptionError,
    Terminated,
    check_generation_options,
    check_load_options,
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
    TemperatureOption,
    TopPOption,
)
from .runtime import (
    answer_options,
    compression_options,
    load_engine,
    preflight,
    sampling_options,
    stage_status,
)

if TYPE_CHECKING:
    from ..engine import Engine
    from ..options import GenerationOptions
    from ..work import OpenVideos


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
    seed: SeedOption = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Not in a terminal: one JSON "
                                              "object per question, one per line.")] = False,
    feature_cache: FeatureCacheOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Not in a terminal: print "
                                        "only the answers.")] = False,
    debug: DebugOption = False,
) -> None:
    """Ask questions about a video interactively: it is decoded, encoded, compressed and
    prefilled once. Not in a terminal, reads one question per line from stdin."""
    with console.cli_errors(debug, json_output or quiet):
        check_numbers(ratio, max_new_tokens)
        check_generation_options(sample, temperature, top_p)
        check_output_modes(json_output, quiet, None)
        check_sampling_options(frames, fps, max_frames, min_pixels, max_pixels)
        check_load_options(device, dtype, attn)
        method_settings = parse_method_options(method_option)
        preflight(model, [method], video)
        interactive = sys.stdin.isatty()
        questions = [] if interactive else [line.strip() for line in sys.stdin if line.strip()]
        if not interactive and not questions:
            raise OptionError("stdin: no question (give one question per line)")
        from ..options import check_options, check_sampling
        from ..report import chat_ready_line

        compression = compression_options(ratio, method, seed, method_settings)
        generation = answer_options(max_new_tokens, sample, temperature, top_p, seed)
        sampling = sampling_options(frames, fps, max_frames, min_pixels, max_pixels)
        check_options(compression, generation, compression_profile_of(model))
        check_sampling(sampling)
        engine = load_engine(model, device, dtype, attn, device_map,
                             quiet or json_output or not interactive, feature_cache,
                             max_new_tokens)
        if not interactive:
            print_answers(engine, engine.ask_many(str(video), questions, sampling,
                                                  compression, generation),
                          json_output, quiet, several=True)
            return
        with stage_status(True):
            opened = engine.open(str(video), sampling, compression)
        console.print_plain(chat_ready_line(opened.contexts[0], opened.prefix), to_stderr=True)
        chat_loop(engine, opened, generation)


def chat_loop(engine: Engine, opened: OpenVideos, generation: GenerationOptions) -> None:
    """Read questions with line editing and history until an empty line or Ctrl-D; Ctrl-C
    stops the answer being written, a second one at the prompt ends the chat."""
    import readline  # noqa: F401  (gives input() line editing and history)

    from ..report import question_footer
    from ..work import Request

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
            request = Request(opened.contexts[0].encoded.request.video, question)
            answer = engine.ask_open(opened, [(0, request)], generation, on_text=write)[0]
        except KeyboardInterrupt as interrupt:
            if isinstance(interrupt, Terminated):  # SIGTERM ends the chat
                raise
            write("\n")
            console.stderr.print("(answer interrupted)", style="dim")
            continue
        except InputError as error:
            console.print_error(first_line(error))
            continue
        write("\n")
        console.stderr.print(question_footer(answer), style="dim", markup=False,
                             highlight=False)
