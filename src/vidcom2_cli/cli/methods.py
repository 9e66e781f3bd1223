"""``vidcom2 methods``: every compressor, its budget rule, signals, options and deviations."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from . import console
from .app import app
from .options import JsonOption


@app.command()
def methods(json_output: JsonOption = False) -> None:
    """List the compression methods: what each keeps, its budget rule, the vision signals it
    reads, its hyperparameters (defaults per family profile) and where it departs from its
    official code."""
    from ..compression import METHODS, PROFILES, SIGNALS

    rows = [{"name": name, "keeps": method.spec.keeps, "budget": method.budget,
             "signals": list(method.signals),
             "options": {profile: method.spec.options_for(profile) for profile in PROFILES
                         if method.spec.defaults},
             "option_help": dict(method.spec.option_help), "notes": method.spec.notes}
            for name, method in METHODS.items()]
    if json_output:
        console.print_json({"methods": rows, "signals": SIGNALS, "profiles": list(PROFILES)})
        return
    table = Table(title="Compression methods (--method NAME, --method-option NAME=VALUE)",
                  title_justify="left", show_lines=True)
    for column in ("method", "keeps; budget", "vision signals", "options (defaults)", "notes"):
        table.add_column(column)
    for row in rows:
        table.add_row(Text(row["name"]), Text(f"{row['keeps']}; {row['budget']}"),
                      Text(", ".join(row["signals"]) or "none"),
                      Text(_option_defaults(row["options"])), Text(row["notes"]))
    stdout = console.stdout
    stdout.print(table)
    stdout.print(Text("Signals: " + "; ".join(f"{name}: {text}"
                                              for name, text in SIGNALS.items())))
    stdout.print(Text("Profiles: onevision = LLaVA-OneVision, llava_video = LLaVA-NeXT-Video; "
                      "every other family uses the qwen defaults."))


def _option_defaults(options: dict[str, dict[str, float]]) -> str:
    """Defaults per profile, written once where every profile has the same."""
    if not options:
        return "none"
    def listed(values: dict[str, float]) -> str:
        return ", ".join(f"{name}={value:g}" for name, value in values.items())

    if len({listed(values) for values in options.values()}) == 1:
        return listed(next(iter(options.values())))
    return "\n".join(f"{profile}: {listed(values)}" for profile, values in options.items())
