"""The Typer application that every command module registers itself on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import __version__

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False)


def _version(value: bool) -> None:
    if value:
        print(f"vidcom2-cli {__version__}")
        print(library_versions())
        raise typer.Exit()


def library_versions() -> str:
    """torch (and the CUDA it was built for), transformers and Python, read from the installed
    files without importing torch (which takes seconds)."""
    import platform
    import re
    from importlib.metadata import PackageNotFoundError, distribution

    parts = []
    for name in ("torch", "transformers"):
        try:
            found = distribution(name)
        except PackageNotFoundError:
            parts.append(f"{name} not installed")
            continue
        text = f"{name} {found.version}"
        if name == "torch":
            version_file = found.locate_file("torch/version.py")
            try:
                cuda = re.search(r"^cuda\b[^=]*=\s*'([^']+)'", Path(version_file).read_text(),
                                 re.MULTILINE)
            except OSError:
                cuda = None
            text += f" (CUDA {cuda.group(1)})" if cuda else " (no CUDA)"
        parts.append(text)
    parts.append(f"Python {platform.python_version()}")
    return ", ".join(parts)


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version (and torch's, CUDA's, "
                                          "transformers') and exit.")] = False,
) -> None:
    """Ask a video LLM about a video, with VidCom2 visual-token compression.

    Environment defaults (options on the command line win): VIDCOM2_MODEL,
    VIDCOM2_DEVICE, VIDCOM2_DTYPE, VIDCOM2_ATTN, VIDCOM2_FRAMES, VIDCOM2_FPS,
    VIDCOM2_MAX_FRAMES, VIDCOM2_RATIO, VIDCOM2_METHOD, VIDCOM2_MAX_NEW_TOKENS,
    VIDCOM2_FEATURE_CACHE.
    """
