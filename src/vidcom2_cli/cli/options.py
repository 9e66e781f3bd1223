"""The options several commands share, each declared once (with its environment variable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..catalog import FEATURE_CACHE_VARIABLE, METHOD_NAMES

_PLAIN_METHODS = ", ".join(name for name in METHOD_NAMES if "+" not in name)

ModelOption = Annotated[str, typer.Option("--model", "-m", envvar="VIDCOM2_MODEL",
                                          show_default="LLaVA-OneVision 0.5B",
                                          help="Hub id, local checkpoint "
                                          "directory, or random:NAME for a random-weight "
                                          "preset (`vidcom2 models` lists both, with the "
                                          "default's id).")]
DeviceOption = Annotated[str, typer.Option(envvar="VIDCOM2_DEVICE",
                                           help="auto, cpu, cuda, cuda:1, ...")]
DtypeOption = Annotated[str, typer.Option(envvar="VIDCOM2_DTYPE",
                                          help="auto (bf16 on an Ampere+ GPU, else fp16; on a "
                                          "CPU bf16 where it computes bf16 natively, AVX512-BF16 "
                                          "or AMX, else fp32), bf16, fp16, fp32.")]
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
# A flag that is off by default is one option (no --no-X twin): the help table then keeps
# room for the help text in 80 columns.
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks and library logs.")]
RatioOption = Annotated[float, typer.Option(envvar="VIDCOM2_RATIO",
                                             help="Fraction of video tokens to keep, in (0, 1].")]
MethodOption = Annotated[str, typer.Option(envvar="VIDCOM2_METHOD",
                                           help=f"Compressor: {_PLAIN_METHODS}, each +fca, "
                                           "vidcom2+flat (see `vidcom2 methods`).")]
MethodSettingOption = Annotated[list[str] | None, typer.Option(
    "--method-option", metavar="NAME=VALUE",
    help="Set one of the method's hyperparameters (repeatable), e.g. tau=0.8; "
    "`vidcom2 methods` lists them with their defaults per family.")]
MaxNewTokensOption = Annotated[int, typer.Option(envvar="VIDCOM2_MAX_NEW_TOKENS",
                                                 help="Longest answer, in tokens.")]
SampleOption = Annotated[bool, typer.Option("--sample", help="Sample instead of greedy decoding.")]
TemperatureOption = Annotated[float | None, typer.Option(help="With --sample.")]
TopPOption = Annotated[float | None, typer.Option(help="With --sample.")]
FeatureCacheOption = Annotated[Path | None, typer.Option(
    envvar=FEATURE_CACHE_VARIABLE, show_envvar=True,
    help="Keep the vision encoder's output of each video in this folder, keyed by the file's "
    "content, the model and the sampling: a later run on the same video (another question, "
    "ratio or method) skips decoding and the encoder. Nothing is cached without it.")]
SeedOption = Annotated[int, typer.Option(help="Seed for random selection and sampling.")]
SelectionSeedOption = Annotated[int, typer.Option(help="Seed for random selection.")]
JsonOption = Annotated[bool, typer.Option("--json")]
ServerOption = Annotated[str | None, typer.Option(
    "--server", envvar="VIDCOM2_SERVER", show_envvar=True, metavar="URL",
    help="Ask a running `vidcom2 serve` at URL (e.g. http://127.0.0.1:8000) instead of loading "
    "the model here; VIDCOM2_API_KEY is sent as its key.")]
