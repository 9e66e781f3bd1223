"""Pictures of a KeepPlan: a contact sheet of the sampled frames and terminal summaries.

The contact sheet shows every sampled frame with the token grid laid over it: the cells of
dropped tokens are darkened and the kept ones left clear, so the reader sees *where* the
compressor spent its budget. The text helpers (sparkline, shade map, top units) say the same
in a terminal: *when* the budget went and *which positions* tended to survive.
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:  # numpy only at run time: a server's client draws from returned masks
    from vidcom2_cli.compression.plan import KeepPlan

# Contact sheet layout, in pixels. Fixed so the sheet's size depends only on the frame
# count, the frame shape, the columns and the tile width (see contact_sheet_size).
PADDING = 4
CAPTION_HEIGHT = 16
MAX_COLUMNS = 8
DROPPED_BRIGHTNESS = 0.25
# Below this cell size (pixels) an outline would cover most of a kept cell, so none is drawn.
MIN_OUTLINED_CELL = 6

_BACKGROUND = (24, 24, 24)
_CAPTION_COLOUR = (210, 210, 210)
_MERGED_TINT = (40, 110, 255)  # blended into merged cells
MERGED_BRIGHTNESS = 0.55
_FAVOURED_COLOUR = (255, 170, 60)  # caption of a frame whose unit got more than the mean
_OUTLINE_COLOUR = (255, 255, 255)

SPARK_LEVELS = "▁▂▃▄▅▆▇█"
SHADE_RAMP = " ░▒▓█"
MAX_HEATMAP_COLUMNS = 48


def default_columns(num_frames: int) -> int:
    """About 1.5 * sqrt(F) columns (a landscape sheet), at most 8 and at most F."""
    if num_frames < 1:
        raise ValueError(f"a contact sheet needs at least one frame, got {num_frames}")
    return max(1, min(MAX_COLUMNS, num_frames, round(math.sqrt(num_frames) * 1.5)))


def _tile_shape(frame_height: int, frame_width: int, tile_width: int) -> tuple[int, int]:
    """(height, width) of one frame's tile: tile_width wide, the frame's aspect kept."""
    if frame_height < 1 or frame_width < 1:
        raise ValueError(f"frames must be at least 1x1 pixels, got {frame_height}x{frame_width}")
    if tile_width < 1:
        raise ValueError(f"tile_width must be positive, got {tile_width}")
    return max(1, round(frame_height * tile_width / frame_width)), tile_width


def contact_sheet_size(num_frames: int, frame_height: int, frame_width: int,
                       columns: int | None = None, tile_width: int = 160) -> tuple[int, int]:
    """(width, height) in pixels of the contact sheet that ``contact_sheet`` draws.

    With ``tile_height = round(frame_height * tile_width / frame_width)`` and
    ``rows = ceil(num_frames / columns)``:
    ``width = PADDING + columns * (tile_width + PADDING)`` and
    ``height = PADDING + rows * (tile_height + CAPTION_HEIGHT + PADDING)``.
    ``columns`` defaults to ``default_columns(num_frames)`` and is capped at ``num_frames``.
    """
    columns = _columns(num_frames, columns)
    tile_height, tile_width = _tile_shape(frame_height, frame_width, tile_width)
    rows = math.ceil(num_frames / columns)
    return (PADDING + columns * (tile_width + PADDING),
            PADDING + rows * (tile_height + CAPTION_HEIGHT + PADDING))


def _columns(num_frames: int, columns: int | None) -> int:
    if columns is None:
        return default_columns(num_frames)
    if columns < 1:
        raise ValueError(f"columns must be positive, got {columns}")
    return min(columns, num_frames)


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
    merging method, the dropped tokens that folded into a kept one tinted blue).

    Frame ``i`` belongs to unit ``i // frames_per_unit`` (the Qwen families merge two frames
    per unit, so both show the same mask). Each tile is captioned "f{i} kept {k}/{N}", in a
    warm colour when the unit's budget ``k`` is above the mean over units. The sheet's size is
    exactly ``contact_sheet_size(F, H, W, columns, tile_width)``.
    """
    grid = _check_frames(frames, plan, frames_per_unit)
    num_frames, frame_height, frame_width = frames.shape[:3]
    columns = _columns(num_frames, columns)
    tile_height, tile_width = _tile_shape(frame_height, frame_width, tile_width)
    sheet = Image.new("RGB", contact_sheet_size(num_frames, frame_height, frame_width,
                                                columns, tile_width), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()

    masks = as_array(plan.mask).reshape(plan.num_units, *grid)
    merged = as_array(plan.merged_mask()).reshape(plan.num_units, *grid) \
        if plan.merges is not None else None
    counts = plan.counts
    mean_count = sum(counts) / len(counts)
    for index, frame in enumerate(frames):
        unit = index // frames_per_unit
        resized = Image.fromarray(frame).resize((tile_width, tile_height), Image.BILINEAR)
        row, column = divmod(index, columns)
        x = PADDING + column * (tile_width + PADDING)
        y = PADDING + row * (tile_height + CAPTION_HEIGHT + PADDING)
        sheet.paste(_overlay(np.asarray(resized), masks[unit],
                             None if merged is None else merged[unit]), (x, y))
        colour = _FAVOURED_COLOUR if counts[unit] > mean_count else _CAPTION_COLOUR
        caption = f"f{index} kept {counts[unit]}/{plan.tokens_per_unit}"
        # Centred by its bounding box rather than an anchor: Pillow 10.0's bitmap default
        # font does not support anchors.
        _, top, _, bottom = draw.textbbox((0, 0), caption, font=font)
        text_y = y + tile_height + (CAPTION_HEIGHT - (bottom - top)) // 2 - top
        draw.text((x + 2, text_y), caption, fill=colour, font=font)
    return sheet


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
