"""``vidcom2 cache info|clear``: the feature cache's size, or emptying it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..catalog import FEATURE_CACHE_VARIABLE
from ..wording import counted
from . import console
from .app import app
from .checks import OptionError
from .options import DebugOption, JsonOption
from .runtime import feature_cache_at

if TYPE_CHECKING:
    from ..feature_cache import FeatureCache

cache_app = typer.Typer(no_args_is_help=True, help="Show or clear the feature cache.")
app.add_typer(cache_app, name="cache")
CacheFolderOption = Annotated[Path | None, typer.Option(
    "--feature-cache", envvar=FEATURE_CACHE_VARIABLE, show_envvar=True,
    help="The feature cache folder.")]


def _cache_folder(folder: Path | None) -> FeatureCache:
    """The cache to show or clear: one that does not exist is a mistake (a typo in the
    folder), not an empty cache."""
    if folder is None:
        raise OptionError(f"--feature-cache: give the cache folder (or set "
                          f"{FEATURE_CACHE_VARIABLE})")
    if not folder.exists():
        raise OptionError(f"--feature-cache: {folder} does not exist")
    return feature_cache_at(folder)


@cache_app.command("info")
def cache_info(folder: CacheFolderOption = None, json_output: JsonOption = False,
               debug: DebugOption = False) -> None:
    """How many entries the feature cache holds and their size."""
    with console.cli_errors(debug):
        cache = _cache_folder(folder)
        from ..report import megabytes

        usage = cache.usage()
        if json_output:
            console.print_json({"folder": str(cache.directory), "entries": usage.entries,
                                "bytes": usage.bytes})
            return
        console.print_plain(f"{cache.directory}: {counted(usage.entries, 'entry', 'entries')}, "
                            f"{megabytes(usage.bytes)}")


@cache_app.command("clear")
def cache_clear(folder: CacheFolderOption = None, debug: DebugOption = False) -> None:
    """Remove every entry of the feature cache."""
    with console.cli_errors(debug):
        cache = _cache_folder(folder)
        from ..report import megabytes

        removed = cache.clear()
        console.print_plain(f"{cache.directory}: removed "
                            f"{counted(removed.entries, 'entry', 'entries')}, "
                            f"{megabytes(removed.bytes)}")
