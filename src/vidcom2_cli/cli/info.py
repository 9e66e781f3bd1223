"""``vidcom2 info VIDEO``: what the decoder sees in a file."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from . import console
from .app import app
from .options import DebugOption, JsonOption


@app.command()
def info(
    video: Annotated[Path, typer.Argument(help="Video file.")],
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Show frames, fps, duration, size and codec as the decoder sees them."""
    with console.cli_errors(debug):
        from ..video import probe

        details = probe(video)
        if json_output:
            console.print_json(asdict(details))
            return
        table = Table(show_header=False, title=str(video), title_justify="left")
        for key, value in asdict(details).items():
            table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
        console.stdout.print(table)
