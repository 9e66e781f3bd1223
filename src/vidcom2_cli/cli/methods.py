"""``vidcom2 methods [NAME]``: every compressor and what it keeps; with a name, its budget rule,
the vision signals it reads, its options (defaults per family profile) and its deviations."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from . import console
from .app import app
from .checks import check_method_names
from .options import DebugOption, JsonOption


@app.command()
def methods(
    name: Annotated[str | None, typer.Argument(help="One method, shown in full.",
                                               show_default=False)] = None,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """List the compression methods: what each keeps; with NAME, its budget rule, the vision
    signals it reads, its hyperparameters (defaults per family profile) and where it departs
    from its official code."""
    with console.cli_errors(debug):
        if name is not None:
            check_method_names([name], "NAME")
        from ..compression import METHODS, PROFILE_LABELS, PROFILES, SIGNALS

        rows = [{"name": key, "keeps": method.spec.keeps, "budget": method.budget,
                 "signals": list(method.signals),
                 "options": {profile: method.spec.options_for(profile) for profile in PROFILES
                             if method.spec.defaults},
                 "option_help": dict(method.spec.option_help), "notes": method.spec.notes}
                for key, method in METHODS.items() if name in (None, key)]
        if json_output:
            console.print_json({"methods": rows, "signals": SIGNALS,
                                "profiles": list(PROFILES)})
        elif name is None:
            _print_list(rows)
        else:
            _print_method(rows[0], SIGNALS, PROFILE_LABELS)


def _print_list(rows: list[dict[str, Any]]) -> None:
    stdout = console.stdout
    stdout.print(Text("Compression methods (--method NAME, --method-option NAME=VALUE)"))
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0, 0, 1))
    table.add_column("method", no_wrap=True)
    table.add_column("keeps")
    table.add_column("options", max_width=16)
    for row in rows:
        names = dict.fromkeys(option for values in row["options"].values() for option in values)
        table.add_row(Text(row["name"]), Text(row["keeps"]),
                      Text(", ".join(names) or "none"))
    stdout.print(table)
    stdout.print(Text("`vidcom2 methods NAME` shows a method's budget rule, vision signals, "
                      "option defaults per family and deviations from its official code."))


def _print_method(row: dict[str, Any], signals: dict[str, str],
                  profile_labels: dict[str, str]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True, style="bold")
    grid.add_column()
    grid.add_row("method", Text(row["name"]))
    grid.add_row("keeps", Text(row["keeps"]))
    grid.add_row("budget", Text(row["budget"]))
    grid.add_row("signals", Text("\n".join(f"{signal}: {signals[signal]}"
                                           for signal in row["signals"]) or "none"))
    grid.add_row("options", _option_lines(row["options"], row["option_help"], profile_labels))
    if row["notes"]:
        grid.add_row("notes", Text(row["notes"]))
    console.stdout.print(grid)


def _option_lines(options: dict[str, dict[str, float]], helps: dict[str, str],
                  profile_labels: dict[str, str]) -> Text:
    """Each option with its default (per family where the families differ) and its help."""
    names = dict.fromkeys(option for values in options.values() for option in values)
    if not names:
        return Text("none")
    lines = []
    for option in names:
        defaults = {profile: values[option] for profile, values in options.items()
                    if option in values}
        if len(set(defaults.values())) == 1 and len(defaults) == len(options):
            default = f"{next(iter(defaults.values())):g}"
        else:
            default = "; ".join(f"{value:g} on {profile_labels[profile]}"
                                for profile, value in defaults.items())
        lines.append(f"{option} = {default}: {helps.get(option, '')}".rstrip(": "))
    return Text("\n".join(lines))
