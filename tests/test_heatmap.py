"""The contact sheet and the terminal summaries of a KeepPlan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vidcom2_cli.compression.plan import KeepPlan, Merges
from vidcom2_cli.heatmap import (
    CAPTION_HEIGHT,
    PADDING,
    budget_sparkline,
    contact_sheet,
    contact_sheet_size,
    default_columns,
    favoured_units,
    save_contact_sheet,
    spatial_heatmap,
)

GREY = 160


def make_plan(mask: torch.Tensor, grid: tuple[int, int]) -> KeepPlan:
    return KeepPlan(mask=mask, method="vidcom2", ratio=0.25, grid=grid)


def grey_frames(count: int, height: int = 64, width: int = 64) -> np.ndarray:
    return np.full((count, height, width, 3), GREY, dtype=np.uint8)


def random_plan(units: int, grid: tuple[int, int], seed: int = 0) -> KeepPlan:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(units, grid[0] * grid[1], generator=generator) < 0.3
    return make_plan(mask, grid)


def top_left_only(units: int) -> KeepPlan:
    mask = torch.zeros(units, 4, dtype=torch.bool)
    mask[:, 0] = True
    return make_plan(mask, (2, 2))


@pytest.mark.parametrize(("num_frames", "height", "width", "columns", "tile_width"), [
    (8, 360, 480, None, 160),
    (1, 90, 160, None, 160),
    (5, 100, 100, 2, 64),
    (32, 224, 224, None, 96),
    (3, 50, 200, 10, 80),  # more columns than frames
])
def test_size_formula_matches_the_image(num_frames: int, height: int, width: int,
                                        columns: int | None, tile_width: int) -> None:
    plan = random_plan(num_frames, (4, 4))
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    sheet = contact_sheet(frames, plan, columns=columns, tile_width=tile_width)
    assert sheet.size == contact_sheet_size(num_frames, height, width, columns, tile_width)


def test_size_formula_is_the_documented_one() -> None:
    # 8 frames -> round(1.5 * sqrt(8)) = 4 columns, 2 rows; 360x480 at 160 wide -> 120 high.
    assert default_columns(8) == 4
    assert contact_sheet_size(8, 360, 480) == (
        PADDING + 4 * (160 + PADDING), PADDING + 2 * (120 + CAPTION_HEIGHT + PADDING))


def test_default_columns_are_capped() -> None:
    assert default_columns(1) == 1
    assert default_columns(64) == 8
    assert default_columns(1000) == 8


def test_only_the_kept_quadrant_stays_bright() -> None:
    sheet = np.asarray(contact_sheet(grey_frames(1), top_left_only(1), tile_width=64))
    # The single 64x64 tile starts at (PADDING, PADDING); sample each quadrant's centre.
    def pixel(row: int, col: int) -> np.ndarray:
        return sheet[PADDING + row, PADDING + col]

    assert (pixel(16, 16) == GREY).all()
    for row, col in [(16, 48), (48, 16), (48, 48)]:
        assert (pixel(row, col) == round(GREY * 0.25)).all()


def test_merged_cells_are_tinted_blue_and_plainly_dropped_ones_dimmed() -> None:
    """Top-left kept; top-right folded into it (merged); the bottom row dropped."""
    mask = torch.tensor([[True, False, False, False]])
    merges = Merges.from_groups([(0, [0, 1], [0.5, 0.5])])
    plan = KeepPlan(mask=mask, method="visionzip", ratio=0.25, grid=(2, 2), merges=merges)
    sheet = np.asarray(contact_sheet(grey_frames(1), plan, tile_width=64)).astype(int)
    kept, merged = sheet[PADDING + 8, PADDING + 8], sheet[PADDING + 8, PADDING + 56]
    dropped = sheet[PADDING + 56, PADDING + 56]
    assert (kept == GREY).all()
    assert merged[2] > merged[0] and merged[2] > GREY * 0.25  # blue, brighter than dropped
    assert (dropped == round(GREY * 0.25)).all()


def test_kept_region_is_outlined_only_on_coarse_grids() -> None:
    coarse = np.asarray(contact_sheet(grey_frames(1), top_left_only(1), tile_width=64))
    assert (coarse[PADDING + 16, PADDING + 32] == 255).all()  # kept/dropped boundary
    fine_mask = torch.zeros(1, 32 * 32, dtype=torch.bool)
    fine_mask[0, 0] = True  # 2-pixel cells on a 64-pixel tile
    fine = np.asarray(contact_sheet(grey_frames(1), make_plan(fine_mask, (32, 32)),
                                    tile_width=64))
    assert (fine[PADDING + 1, PADDING + 2] == round(GREY * 0.25)).all()


def test_both_frames_of_a_unit_share_its_mask() -> None:
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 0] = True  # unit 0: top-left kept
    mask[1, 3] = True  # unit 1: bottom-right kept
    sheet = np.asarray(contact_sheet(grey_frames(4), make_plan(mask, (2, 2)),
                                     frames_per_unit=2, columns=4, tile_width=64))

    def pixel(frame: int, row: int, col: int) -> int:
        return int(sheet[PADDING + row, PADDING + frame * (64 + PADDING) + col, 0])

    for frame in (0, 1):
        assert pixel(frame, 16, 16) == GREY
        assert pixel(frame, 48, 48) < GREY
    for frame in (2, 3):
        assert pixel(frame, 16, 16) < GREY
        assert pixel(frame, 48, 48) == GREY


@pytest.mark.parametrize(("num_frames", "frames_per_unit"), [(3, 1), (5, 1), (4, 2), (7, 2)])
def test_wrong_frame_count_raises(num_frames: int, frames_per_unit: int) -> None:
    with pytest.raises(ValueError, match=f"got {num_frames} frames"):
        contact_sheet(grey_frames(num_frames), top_left_only(4), frames_per_unit=frames_per_unit)


def test_plan_without_grid_raises() -> None:
    plan = KeepPlan(mask=torch.ones(1, 4, dtype=torch.bool), method="vidcom2", ratio=0.25)
    with pytest.raises(ValueError, match="grid"):
        contact_sheet(grey_frames(1), plan)


def test_save_writes_a_png_at_exactly_the_given_path(tmp_path: Path) -> None:
    target = tmp_path / "sheet.output"  # not a .png suffix: it must not be renamed
    plan = random_plan(3, (14, 14))
    frames = grey_frames(6, 90, 120)
    written = save_contact_sheet(target, frames, plan, frames_per_unit=2)
    assert written == target
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.output"]
    with Image.open(target) as image:
        assert image.format == "PNG"
        assert image.size == contact_sheet_size(6, 90, 120)


def test_save_into_a_missing_directory_names_it(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "sheet.png"
    with pytest.raises(ValueError, match="missing"):
        save_contact_sheet(target, grey_frames(1), top_left_only(1))
    assert not target.parent.exists()


def test_sparkline_scale_and_length() -> None:
    assert budget_sparkline([196, 0, 98], 196) == "█▁▅"
    assert len(budget_sparkline([10] * 32, 196)) == 32
    assert budget_sparkline([], 196) == ""


def test_sparkline_buckets_by_max() -> None:
    counts = [0] * 20
    counts[13] = 100
    line = budget_sparkline(counts, 100, width=5)
    assert len(line) == 5
    assert line == "▁▁▁█▁"
    assert len(budget_sparkline(counts, 100, width=40)) == 20  # never stretched


def test_spatial_heatmap_shape_and_extremes() -> None:
    mask = torch.zeros(4, 12, dtype=torch.bool)
    mask[:, 0] = True  # kept in every unit
    mask[:2, 5] = True  # kept in half of them
    lines = spatial_heatmap(make_plan(mask, (3, 4)))
    assert len(lines) == 3
    assert all(len(line) == 4 for line in lines)
    assert lines[0][0] == "█"
    assert lines[1][1] == "▒"
    assert lines[2][3] == " "


def test_spatial_heatmap_downsamples_wide_grids() -> None:
    lines = spatial_heatmap(make_plan(torch.ones(2, 24 * 96, dtype=torch.bool), (24, 96)))
    assert len(lines) == 12
    assert all(line == "█" * 48 for line in lines)


def test_favoured_units() -> None:
    assert favoured_units([5, 9, 9, 1, 7]) == [1, 2, 4]
    assert favoured_units([3, 3], top=5) == [0, 1]
    assert favoured_units([4, 8, 6], top=1) == [1]
