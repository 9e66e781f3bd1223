"""The human report's retained-token summary: budgets per temporal unit, never per frame when a
unit holds several frames."""

from __future__ import annotations

import torch
from rich.console import Console

from vidcom2_cli.compression.plan import KeepPlan
from vidcom2_cli.report import heatmap_summary


def counted_plan(counts: list[int], grid: tuple[int, int] = (11, 20)) -> KeepPlan:
    tokens = grid[0] * grid[1]
    mask = torch.zeros(len(counts), tokens, dtype=torch.bool)
    for unit, count in enumerate(counts):
        mask[unit, :count] = True
    return KeepPlan(mask=mask, method="vidcom2", ratio=0.25, grid=grid)


def summary_lines(plan: KeepPlan, frames_per_unit: int) -> list[str]:
    console = Console(width=80, record=True, color_system=None)
    console.print(heatmap_summary(plan, frames_per_unit))
    return console.export_text().splitlines()


def test_two_frame_units_are_named_by_both_their_frames() -> None:
    lines = summary_lines(counted_plan([41, 41, 96, 41]), frames_per_unit=2)
    assert lines[1].startswith("per 2-frame unit over time (█ = 96 of 220): ")
    assert len(lines[1].split(": ")[1]) == 4  # one sparkline character per unit, not per frame
    assert lines[2] == "largest budgets: frames 5-6 (96), 1-2 (41), 3-4 (41)"
    assert "#" not in "\n".join(lines)


def test_one_frame_units_are_named_by_their_frame() -> None:
    lines = summary_lines(counted_plan([5, 5, 9, 2]), frames_per_unit=1)
    assert lines[1].startswith("per frame over time")
    assert lines[2] == "largest budgets: frames 3 (9), 1 (5), 2 (5)"
    assert summary_lines(counted_plan([4]), 1)[2] == "largest budgets: frame 1 (4)"


def test_the_summary_fits_80_columns_with_large_budgets() -> None:
    lines = summary_lines(counted_plan([1234] * 8, grid=(36, 36)), frames_per_unit=2)
    assert lines[2] == "largest budgets: frames 1-2 (1234), 3-4 (1234), 5-6 (1234)"
    assert max(len(line) for line in lines) <= 80
