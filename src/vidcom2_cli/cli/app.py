"""The Typer application that every command module registers itself on."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import __version__

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False)


def _version(value: bool) -> None:
    if value:
        print(f"vidcom2-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Ask a video LLM about a video, with VidCom2 visual-token compression.

    Environment defaults (options on the command line win): VIDCOM2_MODEL,
    VIDCOM2_DEVICE, VIDCOM2_DTYPE, VIDCOM2_ATTN, VIDCOM2_FRAMES, VIDCOM2_FPS,
    VIDCOM2_MAX_FRAMES, VIDCOM2_RATIO, VIDCOM2_METHOD, VIDCOM2_MAX_NEW_TOKENS,
    VIDCOM2_FEATURE_CACHE.
    """
