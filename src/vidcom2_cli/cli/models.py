"""``vidcom2 models [FAMILY]``: the supported families, recommended checkpoints and
random-weight presets; with a family, how it runs."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from ..catalog import (
    DEFAULT_MODEL,
    RANDOM_PREFIX,
    SUPPORTED_MODEL_TYPES,
    preset_model_type,
    preset_names,
    preset_source,
)
from ..errors import did_you_mean
from . import console
from .app import app
from .checks import OptionError
from .options import DebugOption, JsonOption


@app.command()
def models(
    family: Annotated[str | None, typer.Argument(
        help="A family's config model_type or name (e.g. qwen2_5_vl, Qwen2.5-VL): how it "
        "runs.", show_default=False)] = None,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """List the supported model families, recommended checkpoints and random-weight presets."""
    with console.cli_errors(debug):
        kinds = list(SUPPORTED_MODEL_TYPES) if family is None else [_model_type(family)]
        presets = {f"{RANDOM_PREFIX}{name}": preset_source(name) for name in preset_names()
                   if family is None or preset_model_type(name) in kinds}
        if json_output:
            console.print_json({"default": DEFAULT_MODEL, "families": [
                {"model_type": kind, "family": SUPPORTED_MODEL_TYPES[kind][0],
                 "recommended": list(SUPPORTED_MODEL_TYPES[kind][1]),
                 "options": SUPPORTED_MODEL_TYPES[kind][2]} for kind in kinds],
                "random_presets": presets})
            return
        if family is None:
            _print_families(presets)
        else:
            _print_family(kinds[0], presets)


def _model_type(name: str) -> str:
    """A family named by its model_type or its label, case and punctuation aside."""
    def plain(text: str) -> str:
        return "".join(ch for ch in text.lower() if ch.isalnum())

    for kind, (label, _, _) in SUPPORTED_MODEL_TYPES.items():
        if plain(name) in (plain(kind), *(plain(part) for part in label.split("/"))):
            return kind
    raise OptionError(f"FAMILY: no supported family {name!r}"
                      f"{did_you_mean(name, SUPPORTED_MODEL_TYPES)}; one of: "
                      f"{', '.join(SUPPORTED_MODEL_TYPES)}")


def _print_families(presets: dict[str, str]) -> None:
    stdout = console.stdout
    stdout.print(Text(f"Supported families (default model: {DEFAULT_MODEL})"))
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0, 0, 1), leading=1)
    table.add_column("family (config model_type)", no_wrap=True)
    table.add_column("recommended checkpoints", no_wrap=True)
    for kind, (label, checkpoints, _) in SUPPORTED_MODEL_TYPES.items():
        table.add_row(Text.assemble(label, "\n", (kind, "dim")), Text("\n".join(checkpoints)))
    stdout.print(table)
    _print_presets(presets)
    stdout.print(Text("`vidcom2 models FAMILY` shows how a family runs; every family takes "
                      "every method, ratio, batch and reuse."))


def _print_family(kind: str, presets: dict[str, str]) -> None:
    label, checkpoints, notes = SUPPORTED_MODEL_TYPES[kind]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True, style="bold")
    grid.add_column()
    grid.add_row("family", Text(label))
    grid.add_row("model_type", Text(kind))
    grid.add_row("checkpoints", Text("\n".join(checkpoints)))
    grid.add_row("how it runs", Text(notes + "; every method, ratio, batch and reuse"))
    console.stdout.print(grid)
    if presets:
        _print_presets(presets)


def _print_presets(presets: dict[str, str]) -> None:
    console.stdout.print(Text("Random-weight presets (real architecture, no download, "
                              "meaningless answers; for timing):"))
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0, 0, 1))
    table.add_column("--model", no_wrap=True)
    table.add_column("architecture of", no_wrap=True)
    for name, source in presets.items():
        table.add_row(Text(name), Text(source))
    console.stdout.print(table)
