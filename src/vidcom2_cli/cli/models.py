"""``vidcom2 models``: the supported families, recommended checkpoints and random presets."""

from __future__ import annotations

from rich.table import Table

from ..catalog import (
    DEFAULT_MODEL,
    RANDOM_PREFIX,
    SUPPORTED_MODEL_TYPES,
    preset_names,
    preset_source,
)
from . import console
from .app import app
from .options import JsonOption


@app.command()
def models(json_output: JsonOption = False) -> None:
    """List the supported model families, recommended checkpoints and random-weight presets."""
    presets = {f"{RANDOM_PREFIX}{name}": preset_source(name) for name in preset_names()}
    if json_output:
        console.print_json({"default": DEFAULT_MODEL, "families": [
            {"model_type": kind, "family": label, "recommended": list(checkpoints),
             "options": notes}
            for kind, (label, checkpoints, notes) in SUPPORTED_MODEL_TYPES.items()],
            "random_presets": presets})
        return
    table = Table(title=f"Supported families (default: {DEFAULT_MODEL})", title_justify="left")
    table.add_column("family")
    table.add_column("config model_type")
    table.add_column("recommended checkpoints")
    table.add_column("how it runs (every family takes every method, ratio, batch and reuse)")
    for kind, (label, checkpoints, notes) in SUPPORTED_MODEL_TYPES.items():
        table.add_row(label, kind, "\n".join(checkpoints), notes)
    console.stdout.print(table)
    console.stdout.print("Random-weight presets (real architecture, no download, meaningless "
                         "answers; for timing): " + ", ".join(f"{name} ({source})"
                                                             for name, source in presets.items()))
