"""The GPU suite's summary.md: one table of the parts, the targets, each part's figures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gpu_figures import READERS, format_target, markdown_asks, short_name
from gpu_profiles import PartResult


def markdown(summary: dict[str, Any], results: list[PartResult]) -> list[str]:
    """summary.md's lines: the parts, issue 26's targets, then each part's own tables."""
    suite, environment = summary["suite"], summary["environment"]
    versions = environment.get("versions", {})
    machine = (f"{environment['gpu'].get('name') or 'no GPU'} · torch {environment['torch']} "
               f"(CUDA {environment['cuda']}) · transformers {versions.get('transformers')} "
               f"· Python {environment['python']}" if environment
               else "environment not recorded")
    lines = [f"# GPU suite, {suite['mode']} run of {suite['started']}", "",
             f"{machine} · video {Path(suite['video']).name} · {suite['wall_s']:.0f} s"
             + ("" if suite["complete"] else " · INCOMPLETE (still running or stopped)")
             + (f" · not recorded: {', '.join(suite['not_recorded'])}"
                if not suite["complete"] and suite["not_recorded"] else ""),
             "", "| part | status | wall s | limit s | key figures |", "|---|---|---|---|---|"]
    for result in results:
        detail = result.brief or result.error or ""
        if result.brief and result.error:
            detail = f"{result.brief} ({result.error})"
        lines.append(f"| {result.name} | {result.status} | {result.wall_s:.1f} "
                     f"| {result.limit_s:.3g} | {detail.replace('|', '/')} |")
    if summary["targets"]:
        lines += ["", "## Issue 26 targets at R = 0.25", "",
                  "| model | method | target | figure | must be | met |",
                  "|---|---|---|---|---|---|"]
        for check in summary["targets"]:
            figure, limit = format_target(check)
            lines.append(f"| {short_name(check['model'])} | {check['method']} "
                         f"| {check['target']} | {figure} | {limit} "
                         f"| {'yes' if check['met'] else 'NO'} |")
    asks = [(result.name, result.figures) for result in results
            if result.kind == "ask" and result.figures]
    for result in results:
        reader = READERS[result.kind]
        if result.figures and reader.markdown is not None:
            lines += ["", f"## {result.name}", "", *reader.markdown(result.figures)]
    if asks:
        lines += ["", "## vidcom2 ask --json on the tiny fixtures", "", *markdown_asks(asks)]
    return lines


def targets_of(result: PartResult) -> Iterator[tuple[str, dict[str, Any]]]:
    for model in result.figures.get("results", []):
        for check in model.get("targets", []):
            yield model["model"], check
