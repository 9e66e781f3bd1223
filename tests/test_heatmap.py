"""The contact sheet and the terminal summaries of a KeepPlan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

from vidcom2_cli import heatmap
from vidcom2_cli.compression.plan import KeepPlan, Merges
from vidcom2_cli.heatmap import (
    budget_sparkline,
    contact_sheet,
    contact_sheet_size,
    favoured_units,
    legend_colours,
    save_contact_sheet,
    spatial_heatmap,
)
from vidcom2_cli.sheet_layout import (
    BRACKET_HEIGHT,
    MARGIN,
    MIN_TILE_WIDTH,
    SheetLayout,
    default_columns,
    font_size,
    sheet_layout,
    unit_caption,
)

GREY = 160
BACKGROUND = (24, 24, 24)


def make_plan(mask: torch.Tensor, grid: tuple[int, int]) -> KeepPlan:
    return KeepPlan(mask=mask, method="vidcom2", ratio=0.25, grid=grid)


def grey_frames(count: int, height: int = 96, width: int = 96) -> np.ndarray:
    return np.full((count, height, width, 3), GREY, dtype=np.uint8)


def random_plan(units: int, grid: tuple[int, int], seed: int = 0) -> KeepPlan:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(units, grid[0] * grid[1], generator=generator) < 0.3
    return make_plan(mask, grid)


def top_left_only(units: int) -> KeepPlan:
    mask = torch.zeros(units, 4, dtype=torch.bool)
    mask[:, 0] = True
    return make_plan(mask, (2, 2))


def counted_plan(counts: list[int], tokens: int = 16) -> KeepPlan:
    """A 4x4-grid plan whose unit u keeps its first counts[u] tokens."""
    mask = torch.zeros(len(counts), tokens, dtype=torch.bool)
    for unit, count in enumerate(counts):
        mask[unit, :count] = True
    return make_plan(mask, (4, 4))


def ink(sheet: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """(rows, cols) True where ``box`` of the sheet is not background."""
    left, top, right, bottom = box
    return (sheet[top:bottom, left:right] != BACKGROUND).any(axis=-1)


def extent(flags: np.ndarray) -> tuple[int, int]:
    """First and last index where ``flags`` is True."""
    where = np.flatnonzero(flags)
    assert where.size, "no ink where a label was expected"
    return int(where[0]), int(where[-1])


def caption_lines(layout: SheetLayout, unit: int) -> list[tuple[int, int, int, int]]:
    """The boxes of a unit's two caption lines (below its bracket, if any)."""
    left, top, right, _ = layout.captions[unit]
    top += (BRACKET_HEIGHT if layout.frames_per_unit > 1 else 0)
    height = layout.font.line_height
    return [(left, top + k * height, right, top + (k + 1) * height + 4) for k in (0, 1)]


# --- size and layout ------------------------------------------------------------------------


@pytest.mark.parametrize(("num_frames", "height", "width", "columns", "tile_width", "per_unit"), [
    (8, 360, 480, None, 160, 1),
    (1, 90, 160, None, 160, 1),
    (5, 100, 100, 2, 96, 1),
    (32, 224, 224, None, 96, 1),
    (3, 50, 200, 10, 120, 1),  # more columns than frames
    (8, 360, 480, None, 160, 2),
    (2, 90, 160, None, 160, 2),
    (16, 224, 224, 4, 200, 2),
])
@pytest.mark.parametrize("merging", [False, True])
def test_size_formula_matches_the_image(num_frames: int, height: int, width: int,
                                        columns: int | None, tile_width: int, per_unit: int,
                                        merging: bool) -> None:
    plan = random_plan(num_frames // per_unit, (4, 4))
    if merging:
        kept = int(plan.mask[0].nonzero()[0, 0])
        plan = KeepPlan(plan.mask, "visionzip", 0.3, (4, 4),
                        Merges.from_groups([(kept, [kept], [1.0])]))
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    sheet = contact_sheet(frames, plan, per_unit, columns=columns, tile_width=tile_width)
    assert sheet.size == contact_sheet_size(num_frames, height, width, columns, tile_width,
                                            per_unit, merging)


def test_default_columns_are_capped_and_hold_whole_units() -> None:
    assert default_columns(1) == 1
    assert default_columns(8) == 4
    assert default_columns(64) == 8
    assert default_columns(1000) == 8
    assert default_columns(2, 2) == 2
    assert default_columns(10, 2) == 6  # round(1.5 * sqrt(10)) = 5, up to 3 units
    assert default_columns(64, 2) == 8


def test_columns_must_hold_whole_units() -> None:
    with pytest.raises(ValueError, match="multiple"):
        sheet_layout(8, 90, 160, frames_per_unit=2, columns=3)


def test_tiles_narrower_than_a_label_are_refused() -> None:
    with pytest.raises(ValueError, match="tile_width"):
        sheet_layout(4, 90, 160, tile_width=MIN_TILE_WIDTH - 1)


def test_layout_groups_the_frames_of_a_unit_and_captions_each_unit_once() -> None:
    layout = sheet_layout(8, 90, 160, frames_per_unit=2, columns=4, tile_width=160)
    assert len(layout.captions) == len(layout.units) == 4
    for unit, (left, top, right, bottom) in enumerate(layout.units):
        first, second = layout.tiles[2 * unit], layout.tiles[2 * unit + 1]
        assert first == (left, top) and second[1] == top
        assert right == second[0] + layout.tile_width  # the unit spans both tiles
        caption = layout.captions[unit]
        assert (caption[0], caption[2]) == (left, right) and caption[1] == bottom
    # frames of one unit sit closer together than neighbouring units
    inner = layout.tiles[1][0] - (layout.tiles[0][0] + layout.tile_width)
    between = layout.tiles[2][0] - (layout.tiles[1][0] + layout.tile_width)
    assert inner < between
    # the legend lies below every caption, across the sheet
    assert layout.legend[1] >= max(caption[3] for caption in layout.captions)
    assert layout.legend[3] == layout.size[1]


# --- the tiles ------------------------------------------------------------------------------


def test_only_the_kept_quadrant_stays_bright() -> None:
    plan = top_left_only(1)
    sheet = np.asarray(contact_sheet(grey_frames(1), plan, tile_width=96))
    left, top = sheet_layout(1, 96, 96, tile_width=96).tiles[0]

    def pixel(row: int, col: int) -> np.ndarray:
        return sheet[top + row, left + col]

    assert (pixel(24, 24) == GREY).all()
    for row, col in [(24, 72), (72, 24), (72, 72)]:
        assert (pixel(row, col) == round(GREY * 0.25)).all()


def test_merged_cells_are_tinted_blue_and_plainly_dropped_ones_dimmed() -> None:
    """Top-left kept; top-right folded into it (merged); the bottom row dropped."""
    mask = torch.tensor([[True, False, False, False]])
    merges = Merges.from_groups([(0, [0, 1], [0.5, 0.5])])
    plan = KeepPlan(mask=mask, method="visionzip", ratio=0.25, grid=(2, 2), merges=merges)
    sheet = np.asarray(contact_sheet(grey_frames(1), plan, tile_width=96)).astype(int)
    left, top = sheet_layout(1, 96, 96, tile_width=96, merged=True).tiles[0]
    kept, merged = sheet[top + 12, left + 12], sheet[top + 12, left + 84]
    dropped = sheet[top + 84, left + 84]
    assert (kept == GREY).all()
    assert merged[2] > merged[0] and merged[2] > GREY * 0.25  # blue, brighter than dropped
    assert (dropped == round(GREY * 0.25)).all()


def test_kept_region_is_outlined_only_on_coarse_grids() -> None:
    left, top = sheet_layout(1, 96, 96, tile_width=96).tiles[0]
    coarse = np.asarray(contact_sheet(grey_frames(1), top_left_only(1), tile_width=96))
    assert (coarse[top + 24, left + 48] == 255).all()  # kept/dropped boundary
    fine_mask = torch.zeros(1, 32 * 32, dtype=torch.bool)
    fine_mask[0, 0] = True  # 3-pixel cells on a 96-pixel tile
    fine = np.asarray(contact_sheet(grey_frames(1), make_plan(fine_mask, (32, 32)),
                                    tile_width=96))
    assert (fine[top + 1, left + 3] == round(GREY * 0.25)).all()


def test_both_frames_of_a_unit_share_its_mask() -> None:
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 0] = True  # unit 0: top-left kept
    mask[1, 3] = True  # unit 1: bottom-right kept
    sheet = np.asarray(contact_sheet(grey_frames(4), make_plan(mask, (2, 2)),
                                     frames_per_unit=2, columns=4, tile_width=96))
    tiles = sheet_layout(4, 96, 96, frames_per_unit=2, columns=4, tile_width=96).tiles

    def pixel(frame: int, row: int, col: int) -> int:
        left, top = tiles[frame]
        return int(sheet[top + row, left + col, 0])

    for frame in (0, 1):
        assert pixel(frame, 24, 24) == GREY
        assert pixel(frame, 72, 72) < GREY
    for frame in (2, 3):
        assert pixel(frame, 24, 24) < GREY
        assert pixel(frame, 72, 72) == GREY


# --- captions -------------------------------------------------------------------------------


def test_caption_text_names_the_frames_of_the_unit_and_its_one_budget() -> None:
    assert unit_caption(2, 2, 37, 144) == ("frames 5-6", "37/144 kept")
    assert unit_caption(0, 2, 0, 144) == ("frames 1-2", "0/144 kept")
    assert unit_caption(2, 1, 37, 196) == ("frame 3", "37/196 kept")


def test_a_two_frame_unit_is_captioned_once_centred_under_both_frames() -> None:
    layout = sheet_layout(4, 90, 160, frames_per_unit=2, columns=4, tile_width=160)
    sheet = np.asarray(contact_sheet(grey_frames(4, 90, 160), counted_plan([5, 3]),
                                     frames_per_unit=2, columns=4, tile_width=160))
    for unit, (left, _, right, _) in enumerate(layout.units):
        gap = (layout.tiles[2 * unit][0] + layout.tile_width + layout.tiles[2 * unit + 1][0]) // 2
        for line in caption_lines(layout, unit):
            first, last = extent(ink(sheet, line).any(axis=0))
            # one label, centred on the unit, running across the gap between its frames
            assert abs((left + first + left + last) / 2 - (left + right) / 2) <= 2
            assert left + first < gap < left + last


def test_a_bracket_spans_the_frames_of_a_unit_and_only_then() -> None:
    pairs = sheet_layout(4, 90, 160, frames_per_unit=2, columns=4, tile_width=160)
    sheet = np.asarray(contact_sheet(grey_frames(4, 90, 160), counted_plan([5, 3]),
                                     frames_per_unit=2, columns=4, tile_width=160))
    for left, top, right, _ in pairs.captions:
        drawn = ink(sheet, (left, top, right, top + BRACKET_HEIGHT))
        assert drawn.any(axis=0).all()  # every column from the unit's left to its right edge
        assert drawn[:, 0].sum() >= BRACKET_HEIGHT - 3  # the ends turn up towards the tiles
    singles = sheet_layout(4, 90, 160, columns=4, tile_width=160)
    sheet = np.asarray(contact_sheet(grey_frames(4, 90, 160), counted_plan([5, 3, 2, 1]),
                                     columns=4, tile_width=160))
    for left, top, right, _ in singles.captions:
        assert not ink(sheet, (left, top, right, top + 3)).any()


@pytest.mark.parametrize("per_unit", [1, 2])
def test_labels_are_legible_and_even(per_unit: int) -> None:
    """Digits at least 9 px high at the default tile width, and every unit's lines on the
    same baselines."""
    counts = [16, 3, 9, 12, 1, 7, 5, 11][: 8 // per_unit]
    layout = sheet_layout(8, 90, 160, frames_per_unit=per_unit, columns=4)
    sheet = np.asarray(contact_sheet(grey_frames(8, 90, 160), counted_plan(counts), per_unit,
                                     columns=4))
    rows = {(unit, k): extent(ink(sheet, line).any(axis=1))
            for unit in range(len(counts)) for k, line in enumerate(caption_lines(layout, unit))}
    for first, last in rows.values():
        assert last - first + 1 >= 9
    for k in (0, 1):
        assert len({rows[unit, k] for unit in range(len(counts))}) == 1


def test_label_size_follows_the_tile_width() -> None:
    assert font_size(96) < font_size(160) < font_size(240)
    assert font_size(2000) == font_size(4000)  # capped: a label never outgrows its use


def test_counts_above_the_mean_are_orange() -> None:
    orange = np.array(heatmap._FAVOURED_COLOUR)
    layout = sheet_layout(4, 90, 160, frames_per_unit=2, columns=4, tile_width=160)
    sheet = np.asarray(contact_sheet(grey_frames(4, 90, 160), counted_plan([9, 2]),
                                     frames_per_unit=2, columns=4, tile_width=160))

    def orange_pixels(unit: int) -> int:
        left, top, right, bottom = caption_lines(layout, unit)[1]
        return int((sheet[top:bottom, left:right] == orange).all(axis=-1).sum())

    assert orange_pixels(0) > 0
    assert orange_pixels(1) == 0


def test_labels_stay_legible_without_freetype(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Pillow built without FreeType has only the small bitmap font: it is scaled up."""
    monkeypatch.setattr(ImageFont, "load_default",
                        lambda size=None: ImageFont.load_default_imagefont())
    layout = sheet_layout(2, 90, 160, frames_per_unit=2)
    sheet = np.asarray(contact_sheet(grey_frames(2, 90, 160), counted_plan([7]), 2))
    assert layout.font.scale > 1
    for line in caption_lines(layout, 0):
        first, last = extent(ink(sheet, line).any(axis=1))
        assert last - first + 1 >= 9


# --- the legend -----------------------------------------------------------------------------


def legend_samples(sheet: np.ndarray, layout: SheetLayout) -> dict[str, np.ndarray]:
    """The colour at the middle of each legend entry's sample."""
    return {entry.key: sheet[(entry.sample[1] + entry.sample[3]) // 2,
                             (entry.sample[0] + entry.sample[2]) // 2]
            for entry in layout.entries if entry.sample is not None}


@pytest.mark.parametrize(("per_unit", "merging", "keys"), [
    (1, False, ["kept", "dropped", "count", "favoured"]),
    (1, True, ["kept", "dropped", "merged", "count", "favoured"]),
    (2, False, ["kept", "dropped", "unit", "count", "favoured"]),
])
def test_the_legend_explains_what_the_sheet_shows(per_unit: int, merging: bool,
                                                   keys: list[str]) -> None:
    plan = counted_plan([5, 3, 2, 1][: 4 // per_unit])
    if merging:
        plan = KeepPlan(plan.mask, "visionzip", 0.3, (4, 4),
                        Merges.from_groups([(0, [0, 15], [0.5, 0.5])]))
    layout = sheet_layout(4, 90, 160, per_unit, merged=merging)
    sheet = np.asarray(contact_sheet(grey_frames(4, 90, 160), plan, per_unit))
    assert [entry.key for entry in layout.entries] == keys
    samples = legend_samples(sheet, layout)
    for key, colour in legend_colours().items():
        if key in samples:
            assert tuple(samples[key]) == colour
    assert ("merged" in samples) == merging
    if per_unit > 1:
        assert "2 frames = 1 unit" in next(e.text for e in layout.entries if e.key == "unit")
    for entry in layout.entries:  # every text is drawn, inside the sheet
        left, top = entry.text_at
        right = left + layout.font.width(entry.text)
        assert left >= MARGIN and right <= layout.size[0] - MARGIN
        assert ink(sheet, (left, top, right, top + layout.font.line_height)).any()


def test_the_legend_of_a_one_frame_sheet_wraps_inside_it() -> None:
    layout = sheet_layout(1, 90, 160, merged=True)
    lines = {entry.text_at[1] for entry in layout.entries}
    assert len(lines) > 1
    for entry in layout.entries:
        assert entry.text_at[0] + layout.font.width(entry.text) <= layout.size[0] - MARGIN


# --- errors and files -----------------------------------------------------------------------


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
        assert image.size == contact_sheet_size(6, 90, 120, frames_per_unit=2)


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
