"""Command-line checks and plumbing that need neither torch nor transformers.

Everything here runs before a model is loaded (and, for the option checks, before any heavy
import), so that a bad option or an unreachable model hub costs a fraction of a second and
one line on stderr.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..catalog import (
    ATTENTION_CHOICES,
    DTYPE_NAMES,
    METHOD_NAMES,
    PROFILE_OF_MODEL_TYPE,
    RANDOM_PREFIX,
    SUPPORTED_MODEL_TYPES,
    preset_model_type,
    preset_names,
)
from ..errors import did_you_mean
from ..wording import counted

HUB_TIMEOUT_S = 3.0
_DEVICE = re.compile(r"(auto|cpu|mps|cuda|cuda:\d+|xpu|xpu:\d+)")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+|[A-Za-z0-9][\w.-]*")
_QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}
_NO_BARS_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"  # the hub's and transformers' tqdm bars


class OptionError(ValueError):
    """A bad option value: exit 2, one line naming the option."""


class HubUnreachable(RuntimeError):
    """The model is not on this machine and the hub cannot be reached: exit 1."""


# --- options -----------------------------------------------------------------------------------


def check_sampling_options(frames: int, fps: float | None, max_frames: int,
                           min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    if frames < 1:
        raise OptionError(f"--frames: must be at least 1, got {frames}")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise OptionError(f"--fps: must be a positive number of frames per second, got {fps}")
    if max_frames < 1:
        raise OptionError(f"--max-frames: must be at least 1, got {max_frames}")
    for name, value in (("--min-pixels", min_pixels), ("--max-pixels", max_pixels)):
        if value is not None and value < 1:
            raise OptionError(f"{name}: must be at least 1, got {value}")
    if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        raise OptionError(f"--min-pixels/--max-pixels: min {min_pixels} is above max "
                          f"{max_pixels}")


def check_stream_memory(memory_tokens: int, forget: str) -> None:
    """``--memory-tokens`` and ``--forget`` of ``watch`` and ``serve --watch``."""
    from ..watch.forget import FORGET_MODES

    if memory_tokens < 0:
        raise OptionError(f"--memory-tokens: must be 0 (no bound) or more, got {memory_tokens}")
    if forget not in FORGET_MODES:
        raise OptionError(f"--forget: must be one of {', '.join(FORGET_MODES)}, got {forget!r}")


def check_numbers(ratio: float | None, max_new_tokens: int) -> None:
    if ratio is not None and not (math.isfinite(ratio) and 0 < ratio <= 1):
        raise OptionError(f"--ratio: ratio must be in (0, 1], got {ratio!r}")
    if max_new_tokens < 1:
        raise OptionError(f"--max-new-tokens: must be at least 1, got {max_new_tokens}")


def check_batch_numbers(batch_size: int, prefetch: int | None) -> None:
    if batch_size < 1:
        raise OptionError(f"--batch-size: must be at least 1, got {batch_size}")
    if prefetch is not None and prefetch < 0:
        raise OptionError(f"--prefetch: must be at least 0, got {prefetch}")


def parse_ratios(text: str) -> list[float]:
    """bench's --ratios, checked as ask checks --ratio."""
    try:
        ratios = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise OptionError(f"--ratios: expected comma-separated numbers, got {text!r}") from None
    for ratio in ratios:
        if not (math.isfinite(ratio) and 0 < ratio <= 1):
            raise OptionError(f"--ratios: ratio must be in (0, 1], got {ratio!r}")
    return ratios


def parse_method_options(values: list[str] | None) -> tuple[tuple[str, float], ...]:
    """``--method-option NAME=VALUE`` (repeatable) as (name, number) pairs; OptionError names
    a malformed one. Whether the method has such an option is checked once the model (and so
    the family's defaults) is known."""
    parsed = []
    for value in values or []:
        name, equals, number = value.partition("=")
        try:
            if not equals or not name.strip():
                raise ValueError
            parsed.append((name.strip(), float(number)))
        except ValueError:
            raise OptionError(f"--method-option: expected NAME=NUMBER (e.g. tau=0.8), got "
                              f"{value!r}") from None
    return tuple(parsed)


def check_generation_options(sample: bool, temperature: float | None,
                             top_p: float | None) -> None:
    """--temperature and --top-p are sampling settings: refused without --sample (rather than
    silently ignored) and checked before the model loads."""
    for option, value in (("--temperature", temperature), ("--top-p", top_p)):
        if value is not None and not sample:
            raise OptionError(f"{option}: only applies with --sample (greedy decoding has no "
                              f"{option.removeprefix('--')}); add --sample or drop {option}")
    if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
        raise OptionError(f"--temperature: must be a positive number, got {temperature}")
    if top_p is not None and not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise OptionError(f"--top-p: must be in (0, 1], got {top_p}")


def check_output_modes(json_output: bool, quiet: bool, heatmap: Path | None) -> None:
    if json_output and quiet:
        raise OptionError("--json and --quiet: choose one (--json prints one object, --quiet "
                          "only the answer)")
    if heatmap is not None:
        if heatmap.suffix.lower() not in HEATMAP_FORMATS:
            raise OptionError(f"--heatmap: {heatmap.name} must end in one of "
                              f"{', '.join(sorted(HEATMAP_FORMATS))} (the image format follows "
                              "the suffix)")
        if not heatmap.parent.is_dir():
            raise OptionError(f"--heatmap: folder {heatmap.parent} does not exist")


HEATMAP_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def devices_here() -> list[str]:
    """The devices this machine offers, without importing torch when it is not loaded yet."""
    torch = sys.modules.get("torch")
    if torch is not None:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    else:
        gpus = Path("/proc/driver/nvidia/gpus")
        count = len(list(gpus.iterdir())) if gpus.is_dir() else 0
    return ["cpu"] + [f"cuda:{i}" for i in range(count)]


def check_load_options(device: str, dtype: str, attention: str) -> None:
    """The names --device, --dtype and --attn take (whether this machine can use them is
    known once torch is imported)."""
    if not _DEVICE.fullmatch(device):
        raise OptionError(f"--device: {device!r} is not a device; use auto or one of this "
                          f"machine's: {', '.join(devices_here())}")
    if dtype not in DTYPE_NAMES:
        raise OptionError(f"--dtype: unknown dtype {dtype!r}{did_you_mean(dtype, DTYPE_NAMES)}; "
                          f"choose one of: {', '.join(DTYPE_NAMES)}")
    if attention not in ATTENTION_CHOICES:
        raise OptionError(f"--attn: unknown attention {attention!r}"
                          f"{did_you_mean(attention, ATTENTION_CHOICES)}; choose one of: "
                          f"{', '.join(ATTENTION_CHOICES)}")


def rename_option(error: Exception, names: dict[str, str]) -> Exception:
    """The same error, with the option names of shared checks replaced by the ones this
    command takes (bench's --ratios for the --ratio that check_options names)."""
    message = str(error)
    for old, new in names.items():
        if message.startswith(old + ":"):
            message = new + message[len(old):]
    error.args = (message,)
    return error


# --- the model hub -----------------------------------------------------------------------------


def _looks_like_a_path(reference: str) -> bool:
    return (reference.startswith(("/", "./", "../", "~", ".\\")) or reference.endswith(("/", "\\"))
            or "\\" in reference or not _HUB_ID.fullmatch(reference))


def check_method_names(names: Iterable[str], option: str = "--method") -> None:
    """An unknown method name, refused before torch is imported (the registry's own check
    says the same once it is)."""
    for name in names:
        if name not in METHOD_NAMES:
            raise OptionError(f"{option}: {unknown_method_text(name)}")


def unknown_method_text(name: str) -> str:
    return (f"unknown compression method {name!r}{did_you_mean(name, METHOD_NAMES)}; choose "
            f"one of: {', '.join(METHOD_NAMES)}")


def known_model_type(reference: str) -> str | None:
    """``config.model_type`` of a random preset or a local checkpoint folder, read without
    loading anything; None where it is not known before loading (a hub id)."""
    if reference.startswith(RANDOM_PREFIX):
        name = reference.removeprefix(RANDOM_PREFIX)
        return preset_model_type(name) if name in preset_names() else None
    config = Path(reference).expanduser() / "config.json"
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return model_type if isinstance(model_type, str) else None


def compression_profile_of(reference: str) -> str | None:
    """The compression methods' family profile of a model, where it is known before loading
    (so that a --method-option of another family is refused before the load)."""
    model_type = known_model_type(reference)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return None
    return PROFILE_OF_MODEL_TYPE.get(model_type, "qwen")


def check_model_source(reference: str) -> None:
    """Fail fast when the model cannot be had: a random-weight preset that does not exist, a
    folder that does not exist, or a hub id that is neither in the local cache nor reachable
    within a few seconds (instead of the hub client's half minute of retries). A cached model
    is then loaded offline."""
    if reference.startswith(RANDOM_PREFIX):
        name = reference.removeprefix(RANDOM_PREFIX)
        names = preset_names()
        if name not in names:
            raise OptionError(f"--model: no random-weight preset {name!r}"
                              f"{did_you_mean(name, names)}; presets: {', '.join(names)}")
        return
    if Path(reference).expanduser().exists():
        return
    if _looks_like_a_path(reference):
        raise OptionError(f"--model: {reference}: no such folder")
    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE:
        return  # the cache answers; transformers says when the model is not in it
    if _hub_reachable(hub.ENDPOINT):
        return
    if _cached(reference):
        os.environ["HF_HUB_OFFLINE"] = "1"
        hub.HF_HUB_OFFLINE = True
        return
    here = f" (and there is no folder {reference} here)" if "/" in reference else ""
    raise HubUnreachable(
        f"--model: {reference} is not in the local model cache{here} and the model hub "
        f"({hub.ENDPOINT}) cannot be reached: download it on a connected machine "
        f"(hf download {reference} --local-dir FOLDER) and pass that folder to --model, set "
        "HF_HOME to a cache that holds it, or try --model random:NAME (see `vidcom2 models`)"
    )


def _hub_reachable(endpoint: str) -> bool:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(endpoint.rstrip("/") + "/api/models", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=HUB_TIMEOUT_S):
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, ValueError):
        return False


def _cached(reference: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(reference, "config.json")
    except Exception:
        return False
    return isinstance(found, str)


# --- logs and signals --------------------------------------------------------------------------


def library_logs(show: bool, progress: bool | None = None) -> None:
    """Library log output (FFmpeg, decord, the hub client, transformers, Python warnings)
    reaches stderr only with ``show`` (--debug). Progress bars (a model's download, its
    weights loading) show with ``progress``, by default where stderr is a terminal: a command
    printing --json or --quiet passes False; they never show when piped. Environment variables
    cover the libraries not imported yet; those already imported are told directly."""
    progress = show or (sys.stderr.isatty() if progress is None else progress)
    if show:
        warnings.resetwarnings()
    else:
        for key, value in _QUIET_ENV.items():
            os.environ.setdefault(key, value)
        warnings.simplefilter("ignore")
    if not progress:
        os.environ.setdefault(_NO_BARS_ENV, "1")
    if "transformers" in sys.modules:
        logging = sys.modules["transformers"].utils.logging
        (logging.set_verbosity_warning if show else logging.set_verbosity_error)()
        # transformers' switch also sets the hub client's, which the next lines set again
        (logging.enable_progress_bar if progress else logging.disable_progress_bar)()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
        from huggingface_hub.utils import logging as hub_logging

        (hub_logging.set_verbosity_warning if show else hub_logging.set_verbosity_error)()
        # HF_HUB_DISABLE_PROGRESS_BARS, when set before the hub client was imported, wins
        (enable_progress_bars if progress else disable_progress_bars)()
    if show or "av" in sys.modules or "decord" in sys.modules:
        from ..decoders import library_logs as decoder_logs

        decoder_logs(show)


class Terminated(KeyboardInterrupt):
    """SIGTERM: handled as Ctrl-C, except where Ctrl-C only stops the current step (chat)."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a batch scheduler's stop) ends the command like Ctrl-C does."""

    def interrupt(signum: int, frame: Any) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (e.g. an embedding application)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def output_records(path: str) -> Iterator[dict[str, Any]]:
    """The complete JSON records of a batch output file."""
    import json

    try:
        data = Path(path).read_bytes()
    except OSError:
        return
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def whole_output_line(summary: Any) -> str:
    """A BatchSummary filled from every record of an output file, as one line."""
    values = summary.as_dict()
    line = (f"{counted(values['processed'], 'record')} ({values['answered']:,} answered, "
            f"{counted(values['errors'], 'error')})")
    if values["mean_kept_ratio"] is not None:
        line += f", mean kept ratio {values['mean_kept_ratio']:.3f}"
    if values["accuracy"] is not None:
        line += (f", accuracy {values['correct']}/{values['scored']} = "
                 f"{100.0 * values['accuracy']:.1f}%")
    return line
