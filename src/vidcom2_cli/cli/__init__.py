"""The ``vidcom2`` command: one module per command, each registering itself on the Typer app
(``app.py``); shared options in ``options.py``, checks that need no torch in ``checks.py``,
output and the exit-code rules in ``console.py``, model-running plumbing in ``runtime.py``.

Exit codes: 0 ok, 2 bad usage or bad input (one line on stderr), 1 runtime failure.
torch and transformers are imported only inside the commands that run a model: ``--help``,
``models``, ``info`` and option errors answer without them.
"""

from __future__ import annotations

import sys

import typer

from ..batch.ray_options import looks_like_address

# The command modules register themselves on import; this order is the order of --help.
# isort: off
from . import ask, chat, watch, serve, bench, batch, eval, cache, models, methods, info  # noqa: F401
# isort: on
from .app import app
from .console import print_error, stderr

__all__ = ["app", "main", "with_ray_address"]


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
        print_error(f"{error.format_message()}{hint}")
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
