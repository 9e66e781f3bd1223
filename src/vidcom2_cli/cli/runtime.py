"""What the commands that run a model share: the option objects built from the command line,
loading the engine, the stage status line and the closing run line.

torch and transformers are imported here only inside the functions, so that importing the CLI
(``--help``, ``models``, option errors) stays light."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from ..catalog import RANDOM_PREFIX
from ..containers import read_head
from ..errors import InputError
from . import console
from .checks import check_method_names, check_model_source

if TYPE_CHECKING:
    from ..engine import Engine
    from ..feature_cache import FeatureCache
    from ..options import CompressionOptions, GenerationOptions, SamplingOptions
    from ..work import Answer

SHORT_ANSWER_TOKENS = 8
_STAGE_NAMES = {"feature_cache": "reading the feature cache",
                "video_decode": "decoding the sampled frames", "preprocess": "preprocessing",
                "vision": "running the vision encoder", "compress": "compressing visual tokens",
                "prefill": "prefill (reading the prompt)", "decode": "generating the answer"}


def sampling_options(frames: int, fps: float | None, max_frames: int, min_pixels: int | None,
                     max_pixels: int | None) -> SamplingOptions:
    from ..options import SamplingOptions

    return SamplingOptions(frames=frames, fps=fps, max_frames=max_frames,
                           min_pixels=min_pixels, max_pixels=max_pixels)


def compression_options(ratio: float, method: str, seed: int,
                        method_options: tuple[tuple[str, float], ...]) -> CompressionOptions:
    from ..options import CompressionOptions

    return CompressionOptions(ratio=ratio, method=method, seed=seed,
                              method_options=method_options)


def answer_options(max_new_tokens: int, sample: bool, temperature: float | None,
                   top_p: float | None, seed: int) -> GenerationOptions:
    """How ``ask`` and ``chat`` generate (bench forces its token count, batch is greedy)."""
    from ..options import GenerationOptions

    return GenerationOptions(max_new_tokens=max_new_tokens, do_sample=sample,
                             temperature=temperature, top_p=top_p, seed=seed)


def load_engine(model: str, device: str, dtype: str, attn: str, device_map: str | None,
                quiet: bool = False, feature_cache: Path | None = None,
                max_new_tokens: int | None = None) -> Engine:
    """The engine for ``model`` (checked by ``preflight`` first). A random-weight model says
    so on stderr, and on a CPU suggests short answers when ``max_new_tokens`` is long (its
    answers mean nothing, and each token of a real-size model costs a second there)."""
    from ..engine import Engine
    from ..models import LoadOptions
    from ..report import RANDOM_WEIGHTS_NOTE

    options = LoadOptions(device=device, dtype=dtype, attention=attn, device_map=device_map)
    cache = None if feature_cache is None else feature_cache_at(feature_cache)
    # A checkpoint's download and weight loading draw their own bars on a terminal, which a
    # spinner would overwrite; only a random-weight preset, built without a bar, gets one.
    spinner = not quiet and model.startswith(RANDOM_PREFIX)
    with console.stderr.status(f"building {model} ...") if spinner else nullcontext():
        engine = Engine.load(model, options, feature_cache=cache)
    if engine.random_weights:  # on stderr too, so that --json and --quiet runs say it
        note = RANDOM_WEIGHTS_NOTE
        if engine.device.type == "cpu" and (max_new_tokens or 0) > SHORT_ANSWER_TOKENS:
            note += (f"; on a CPU, --max-new-tokens {SHORT_ANSWER_TOKENS} is enough to time "
                     "it")
        console.stderr.print(note, style="bold yellow", markup=False, highlight=False)
    return engine


def feature_cache_at(directory: Path) -> FeatureCache:
    from ..feature_cache import FeatureCache

    if directory.exists() and not directory.is_dir():
        raise InputError(f"--feature-cache: {directory} is not a folder")
    return FeatureCache(directory, report=lambda message: console.stderr.print(
        message, style="yellow", markup=False, highlight=False))


def run_line(info: dict[str, object]) -> str:
    """The closing line: what ran the model (an ``Engine.run_info()``)."""
    return (f"vidcom2-cli {info['version']} · model loaded in {info['model_load_s']:.1f} s · "
            f"{info['device']} {info['dtype']} {info['attention']}")


@contextmanager
def stage_status(show: bool) -> Iterator[Callable[[], None]]:
    """A status line naming the current stage, on a terminal only; yields what stops it (so
    that an answer can stream in its place)."""
    if not (show and console.stderr.is_terminal):
        yield lambda: None
        return
    from ..timing import stage_listener

    with console.stderr.status("starting ...") as status, stage_listener(
            lambda stage: status.update(f"{_STAGE_NAMES.get(stage, stage)} ...")):
        yield status.stop


def each_with_status(answers: Iterable[Answer], show: bool) -> Iterator[Answer]:
    """The answers of several questions, with the stage status line shown while each one is
    being worked out and gone while it is printed."""
    iterator = iter(answers)
    while True:
        with stage_status(show):
            answer = next(iterator, None)
        if answer is None:
            return
        yield answer


def preflight(model: str, methods: Iterable[str], video: Path | None = None,
              method_option_name: str = "--method") -> None:
    """What can be refused before torch is imported (a fraction of a second): the video file
    (missing, a folder, unreadable, undecodable), the method names and the model source (a
    preset that does not exist, a missing folder, an unreachable hub)."""
    check_method_names(methods, method_option_name)
    if video is not None:
        read_head(video)  # a missing file or a folder, before even the decoders are imported
    check_model_source(model)
    if video is not None:
        from ..video import probe

        probe(video)
