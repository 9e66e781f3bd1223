"""Where the commands write: the two consoles, JSON lines, and failures as one stderr line with
an exit code (2 bad usage or input, 1 runtime failure, 130 interrupted; a traceback only with
``--debug``).

Commands reach the consoles as ``console.stdout`` / ``console.stderr`` (module attributes, so
that a test can swap one for a terminal console)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.text import Text

from ..errors import InputError, ModelLoadError, VideoError, first_line

if TYPE_CHECKING:
    from ..batch.progress import BatchSummary

from .checks import HubUnreachable, OptionError, library_logs, sigterm_as_interrupt

# A terminal's own width; piped or redirected, $COLUMNS, else 80 (tables are laid out for it).
stdout = Console()
stderr = Console(stderr=True)


def print_json(payload: object) -> None:
    sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def print_error(message: str) -> None:
    """One line, never read as rich markup (a path may hold "[/...]")."""
    stderr.print(Text.assemble(("error:", "red"), " ", message), highlight=False,
                 soft_wrap=True)


def print_plain(text: str, *, to_stderr: bool = False) -> None:
    """A line of data (paths, answers, library text): never markup, never highlighted, never
    broken by rich (a long path stays one line for a script to read; a terminal wraps it)."""
    (stderr if to_stderr else stdout).print(text, markup=False, highlight=False,
                                            soft_wrap=True)


@contextmanager
def cli_errors(debug: bool, machine_output: bool = False) -> Iterator[None]:
    """Turn failures into one stderr line and an exit code (tracebacks only with --debug).

    Library log output reaches stderr only with --debug; download and loading bars show on a
    terminal unless the command prints for a script (``machine_output``: --json, --quiet);
    SIGTERM stops a command as Ctrl-C does."""
    library_logs(show=debug, progress=False if machine_output else None)
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
        print_error(str(error))
        raise typer.Exit(1) from None
    except Exception as error:
        if debug:
            raise
        if _bad_input(error):
            print_error(_as_given(first_line(error)))
            raise typer.Exit(2) from None
        print_error(_runtime_message(error))
        raise typer.Exit(1) from None


def _bad_input(error: BaseException) -> bool:
    """Bad usage or input (exit 2): the error types of modules not imported yet cannot occur."""
    kinds: list[type] = [VideoError, OptionError, InputError, ModelLoadError]
    for module, name in (("vidcom2_cli.evaluation.common", "DatasetError"),):
        if module in sys.modules:
            kinds.append(getattr(sys.modules[module], name))
    return isinstance(error, tuple(kinds))


def _as_given(message: str) -> str:
    """A message about ``--option`` whose value came from its environment variable names
    the variable the user set instead of an option they never typed."""
    option, colon, rest = message.partition(": ")
    context = _current_context()
    if not (colon and option.startswith("--")) or context is None:
        return message
    for param in context.command.params:
        if option in getattr(param, "opts", ()) and param.envvar and (
                context.get_parameter_source(param.name).name == "ENVIRONMENT"):
            return f"{param.envvar} (from the environment): {rest}"
    return message


def _current_context() -> typer.Context | None:
    """The running command's click context (typer's own copy of click, or click)."""
    import importlib

    for module in ("typer._click.globals", "click.globals"):
        try:
            return importlib.import_module(module).get_current_context(silent=True)
        except ImportError:
            continue
    return None


def _runtime_message(error: Exception) -> str:
    from ..timing import is_out_of_memory

    if is_out_of_memory(error):
        return ("out of memory: lower --frames, lower --ratio, or use a smaller --model "
                "(or a smaller --batch-size in batch mode)")
    return (f"{type(error).__name__}: {first_line(error)} (run again with --debug for the "
            "traceback)")


def fail_if_all_failed(summary: BatchSummary) -> None:
    """Exit 1 when a run answered nothing (each record says why)."""
    if summary.processed and summary.answered == 0:
        print_error(f"every one of the {summary.processed} items failed (see the error "
                    "field of each record)")
        raise typer.Exit(1)
