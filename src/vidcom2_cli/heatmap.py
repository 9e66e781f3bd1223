"""Pictures of a KeepPlan: a contact sheet of the sampled frames and terminal summaries.

The contact sheet shows every sampled frame with the token grid laid over it: the cells of
dropped tokens are darkened and the kept ones left clear, so the reader sees *where* the
compressor spent its budget; each temporal unit is captioned once with its budget, and a legend
strip explains the encoding (the geometry is ``sheet_layout``'s). The text helpers (sparkline,
shade map, top units) say the same in a terminal: *when* the budget went and *which positions*
tended to survive.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from vidcom2_cli.sheet_layout import (
    BRACKET_HEIGHT,
    CAPTION_PAD,
    MARGIN,
    SheetLayout,
    sheet_layout,
    unit_caption,
)

if TYPE_CHECKING:  # numpy only at run time: a server's client draws from returned masks
    from vidcom2_cli.compression.plan import KeepPlan

DROPPED_BRIGHTNESS = 0.25
# Below this cell size (pixels) an outline would cover most of a kept cell, so none is drawn.
MIN_OUTLINED_CELL = 6

_BACKGROUND = (24, 24, 24)
_CAPTION_COLOUR = (210, 210, 210)
_BRACKET_COLOUR = (170, 170, 170)
_RULE_COLOUR = (70, 70, 70)
_MERGED_TINT = (40, 110, 255)  # blended into merged cells
MERGED_BRIGHTNESS = 0.55
_FAVOURED_COLOUR = (255, 170, 60)  # count of a unit that got more than the mean
_OUTLINE_COLOUR = (255, 255, 255)
_SAMPLE_GREY = 160  # the legend's swatches show this grey kept, dropped and merged

SPARK_LEVELS = "▁▂▃▄▅▆▇█"
SHADE_RAMP = " ░▒▓█"
MAX_HEATMAP_COLUMNS = 48


def contact_sheet_size(num_frames: int, frame_height: int, frame_width: int,
                       columns: int | None = None, tile_width: int = 160,
                       frames_per_unit: int = 1, merged: bool = False) -> tuple[int, int]:
    """(width, height) in pixels of the contact sheet that ``contact_sheet`` draws: it depends
    on the frame count and shape, the layout options, and whether a merging method ran (one
    more legend entry), never on which tokens were kept."""
    return sheet_layout(num_frames, frame_height, frame_width, frames_per_unit, columns,
                        tile_width, merged).size


def _cell_edges(pixels: int, cells: int) -> np.ndarray:
    """Pixel boundaries of ``cells`` grid cells over ``pixels``: round(i * pixels / cells)."""
    return np.round(np.arange(cells + 1) * pixels / cells).astype(np.int64)


def _cell_index(pixels: int, cells: int) -> np.ndarray:
    """For each pixel along one axis, the grid cell it falls in."""
    edges = _cell_edges(pixels, cells)
    return np.searchsorted(edges, np.arange(pixels), side="right") - 1


def _overlay(tile: np.ndarray, unit_mask: np.ndarray, unit_merged: np.ndarray | None = None
             ) -> Image.Image:
    """The tile with dropped cells darkened, merged cells (dropped, but folded into a kept
    token) tinted blue, and the kept region outlined.

    ``unit_mask`` is the (h, w) keep mask of the tile's unit. The outline is drawn only where a
    kept cell meets a dropped one (not around every cell), so a dense 14x14 grid stays legible,
    and not at all when cells are smaller than ``MIN_OUTLINED_CELL`` pixels.
    """
    height, width = tile.shape[:2]
    rows, cols = unit_mask.shape
    row_of = _cell_index(height, rows)
    col_of = _cell_index(width, cols)
    kept = unit_mask[np.ix_(row_of, col_of)]
    shaded = np.where(kept[..., None], tile, tile * DROPPED_BRIGHTNESS).astype(np.uint8)
    if unit_merged is not None:
        merged = unit_merged[np.ix_(row_of, col_of)]
        tinted = tile * MERGED_BRIGHTNESS + np.asarray(_MERGED_TINT) * (1 - MERGED_BRIGHTNESS)
        shaded = np.where(merged[..., None], tinted, shaded).astype(np.uint8)

    if min(height / rows, width / cols) >= MIN_OUTLINED_CELL:
        # A boundary pixel is the first pixel of a cell whose neighbour before it differs.
        outline = np.zeros((height, width), dtype=bool)
        outline[1:, :] |= kept[1:, :] != kept[:-1, :]
        outline[:, 1:] |= kept[:, 1:] != kept[:, :-1]
        shaded[outline] = _OUTLINE_COLOUR
    return Image.fromarray(shaded)


def _check_frames(frames: np.ndarray, plan: KeepPlan, frames_per_unit: int) -> tuple[int, int]:
    """Validate the inputs of contact_sheet; returns the plan's (h, w) grid."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a (F, H, W, 3) uint8 array, got {frames.dtype} "
                         f"of shape {frames.shape}")
    if frames_per_unit < 1:
        raise ValueError(f"frames_per_unit must be positive, got {frames_per_unit}")
    if plan.grid is None:
        raise ValueError("the plan has no token grid, so its tokens cannot be placed on frames")
    expected = plan.num_units * frames_per_unit
    if frames.shape[0] != expected:
        raise ValueError(f"got {frames.shape[0]} frames but the plan has {plan.num_units} units "
                         f"of {frames_per_unit} frame(s) each, i.e. {expected} frames")
    return plan.grid


def contact_sheet(frames: np.ndarray, plan: KeepPlan, frames_per_unit: int = 1,
                  columns: int | None = None, tile_width: int = 160) -> Image.Image:
    """A grid of the sampled frames with each one's kept tokens left clear (and, for a
    merging method, the dropped tokens that folded into a kept one tinted blue), and a legend.

    Frame ``i`` belongs to unit ``i // frames_per_unit``. The frames of one unit (the Qwen and
    GLM families put 2 in one) sit side by side under one bracket and show its one mask; the
    unit is captioned once, "frames 5-6" over "37/144 kept" (its budget ``k`` of its ``N``
    tokens), the count in a warm colour when ``k`` is above the mean over units. Frames are
    numbered from 1 in sampling order. The sheet's size is ``contact_sheet_size(F, H, W,
    columns, tile_width, frames_per_unit, merged=plan.merges is not None)``.
    """
    grid = _check_frames(frames, plan, frames_per_unit)
    num_frames, frame_height, frame_width = frames.shape[:3]
    merging = plan.merges is not None
    layout = sheet_layout(num_frames, frame_height, frame_width, frames_per_unit, columns,
                          tile_width, merging)
    sheet = Image.new("RGB", layout.size, _BACKGROUND)
    draw = ImageDraw.Draw(sheet)

    masks = as_array(plan.mask).reshape(plan.num_units, *grid)
    merged = as_array(plan.merged_mask()).reshape(plan.num_units, *grid) if merging else None
    for index, (frame, corner) in enumerate(zip(frames, layout.tiles, strict=True)):
        unit = index // frames_per_unit
        resized = Image.fromarray(frame).resize((layout.tile_width, layout.tile_height),
                                                Image.BILINEAR)
        sheet.paste(_overlay(np.asarray(resized), masks[unit],
                             None if merged is None else merged[unit]), corner)
    _draw_captions(sheet, draw, layout, plan.counts, plan.tokens_per_unit)
    _draw_legend(sheet, draw, layout)
    return sheet


def _draw_bracket(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int]) -> None:
    """A square bracket open upwards, 2 pixels thick, filling ``box`` (exclusive right and
    bottom edges)."""
    left, top, right, bottom = box
    for part in ((left, top, left + 1, bottom - 1), (right - 2, top, right - 1, bottom - 1),
                 (left, bottom - 2, right - 1, bottom - 1)):
        draw.rectangle(part, fill=_BRACKET_COLOUR)


def _draw_captions(sheet: Image.Image, draw: ImageDraw.ImageDraw, layout: SheetLayout,
                   counts: list[int], tokens_per_unit: int) -> None:
    """Under each unit: a bracket when it holds several frames, then its frames and its one
    count, centred on the unit."""
    font = layout.font
    mean_count = sum(counts) / len(counts)
    for unit, (left, top, right, _) in enumerate(layout.captions):
        y = top + CAPTION_PAD
        if layout.frames_per_unit > 1:
            _draw_bracket(draw, (left, top + 1, right, top + BRACKET_HEIGHT - 1))
            y += BRACKET_HEIGHT
        frames_text, count_text = unit_caption(unit, layout.frames_per_unit, counts[unit],
                                               tokens_per_unit)
        count_colour = _FAVOURED_COLOUR if counts[unit] > mean_count else _CAPTION_COLOUR
        for text, colour in ((frames_text, _CAPTION_COLOUR), (count_text, count_colour)):
            font.draw(sheet, (left + right - font.width(text)) // 2, y, text, colour)
            y += font.line_height


def legend_colours() -> dict[str, tuple[int, int, int]]:
    """The swatch of each legend entry that has one: a mid grey kept, dropped and merged, shaded
    as ``_overlay`` shades the tiles."""
    grey = np.full(3, _SAMPLE_GREY, dtype=float)
    merged = grey * MERGED_BRIGHTNESS + np.asarray(_MERGED_TINT) * (1 - MERGED_BRIGHTNESS)
    return {"kept": (_SAMPLE_GREY,) * 3,
            "dropped": tuple(int(v) for v in (grey * DROPPED_BRIGHTNESS).astype(np.uint8)),
            "merged": tuple(int(v) for v in merged.astype(np.uint8))}


def _draw_legend(sheet: Image.Image, draw: ImageDraw.ImageDraw, layout: SheetLayout) -> None:
    """A rule across the sheet, then each entry: its sample and its text."""
    left, top, right, _ = layout.legend
    draw.line([(left + MARGIN, top), (right - MARGIN - 1, top)], fill=_RULE_COLOUR, width=1)
    swatches = legend_colours()
    for entry in layout.entries:
        if entry.key in swatches and entry.sample is not None:
            x0, y0, x1, y1 = entry.sample
            # kept cells meet dropped ones at a white outline; the others get a grey edge so a
            # dark swatch still stands out from the background
            draw.rectangle([x0, y0 + 1, x1 - 1, y1 - 2], fill=swatches[entry.key],
                           outline=_OUTLINE_COLOUR if entry.key == "kept" else _BRACKET_COLOUR)
        elif entry.key == "unit" and entry.sample is not None:
            x0, y0, x1, y1 = entry.sample
            _draw_bracket(draw, (x0, y0 + 2, x1, y1 - 2))
        colour = _FAVOURED_COLOUR if entry.key == "favoured" else _CAPTION_COLOUR
        layout.font.draw(sheet, *entry.text_at, entry.text, colour)


def save_contact_sheet(path: str | os.PathLike[str], frames: np.ndarray, plan: KeepPlan,
                       frames_per_unit: int = 1, columns: int | None = None,
                       tile_width: int = 160) -> Path:
    """Write the contact sheet at exactly ``path``, as JPEG or WebP when its suffix says so,
    else as PNG; return it."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"cannot write the contact sheet to {path}: "
                         f"directory {path.parent} does not exist")
    sheet = contact_sheet(frames, plan, frames_per_unit, columns, tile_width)
    image_format = _SUFFIX_FORMATS.get(path.suffix.lower(), "PNG")
    if image_format == "JPEG" and sheet.mode != "RGB":
        sheet = sheet.convert("RGB")
    sheet.save(path, format=image_format)
    return path


_SUFFIX_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def budget_sparkline(counts: list[int], tokens_per_unit: int, width: int | None = None) -> str:
    """One block character per unit, ▁ for no tokens up to █ for all ``tokens_per_unit``.

    The scale is absolute (not the range of ``counts``) so a sparkline also says how much was
    kept overall. With more units than ``width``, consecutive units share a character showing
    their largest budget, so a favoured frame is never averaged away.
    """
    if tokens_per_unit < 1:
        raise ValueError(f"tokens_per_unit must be positive, got {tokens_per_unit}")
    if width is not None and width < 1:
        raise ValueError(f"width must be positive, got {width}")
    if width is not None and len(counts) > width:
        edges = _cell_edges(len(counts), width).tolist()
        counts = [max(counts[start:end]) for start, end in itertools.pairwise(edges)]
    top = len(SPARK_LEVELS) - 1
    return "".join(SPARK_LEVELS[min(top, max(0, round(count / tokens_per_unit * top)))]
                   for count in counts)


def spatial_heatmap(plan: KeepPlan) -> list[str]:
    """The plan's grid as lines of shade characters: ' ' never kept up to █ kept in every unit.

    Grids wider than 48 positions are averaged down to 48 columns and as many fewer rows.
    """
    if plan.grid is None:
        raise ValueError("the plan has no token grid to draw")
    frequency = as_array(plan.spatial_frequency()).astype(np.float32)
    rows, cols = plan.grid
    if cols > MAX_HEATMAP_COLUMNS:
        shape = (max(1, round(rows * MAX_HEATMAP_COLUMNS / cols)), MAX_HEATMAP_COLUMNS)
        frequency = _average_pool(frequency, shape)
    top = len(SHADE_RAMP) - 1
    levels = np.round(np.clip(frequency, 0, 1) * top).astype(np.int64).tolist()
    return ["".join(SHADE_RAMP[level] for level in line) for line in levels]


def _average_pool(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Adaptive average pooling of a 2-D array to ``shape``: output cell i along an axis of
    ``n`` inputs and ``m`` outputs averages inputs floor(i*n/m) to ceil((i+1)*n/m) - 1 (the
    bins of torch's adaptive_avg_pool2d)."""

    def bins(inputs: int, outputs: int) -> list[tuple[int, int]]:
        return [((i * inputs) // outputs, -((-(i + 1) * inputs) // outputs))
                for i in range(outputs)]

    pooled = np.empty(shape, dtype=np.float32)
    for row, (top, bottom) in enumerate(bins(values.shape[0], shape[0])):
        for col, (left, right) in enumerate(bins(values.shape[1], shape[1])):
            cell = values[top:bottom, left:right]
            pooled[row, col] = cell.sum(dtype=np.float32) / np.float32(cell.size)
    return pooled


def as_array(values: Any) -> np.ndarray:
    """A torch tensor (on any device) or an array-like as a numpy array."""
    if hasattr(values, "detach"):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def favoured_units(counts: list[int], top: int = 3) -> list[int]:
    """Indices of the ``top`` units with the largest budgets, largest first (ties: earlier)."""
    if top < 0:
        raise ValueError(f"top must not be negative, got {top}")
    return sorted(range(len(counts)), key=lambda unit: (-counts[unit], unit))[:top]
