"""Where everything on the contact sheet goes: tiles grouped by temporal unit, one caption per
unit, a legend strip; and the label font, sized to the tiles.

Pure geometry and text measurement, with no plan and no pixels of the frames, so the sheet's
size is known before it is drawn (``sheet_layout(...).size``). A unit of several frames (the
Qwen and GLM families put 2 frames in one temporal unit, which shares one keep mask and one
budget) is laid out as adjacent tiles under one bracket and one caption, never a caption per
frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

# Layout, in pixels.
MARGIN = 8  # around the sheet
UNIT_GAP = 12  # between the tiles of neighbouring units
INNER_GAP = 2  # between the frames of one unit
ROW_GAP = 8  # below a row's captions
BRACKET_HEIGHT = 8  # the bracket under the tiles of a unit of several frames
CAPTION_PAD = 3  # above and below a caption's two lines
LEGEND_ITEM_GAP = 16  # between legend entries on one line
LEGEND_LINE_GAP = 4
MAX_COLUMNS = 8
MIN_TILE_WIDTH = 96  # narrower tiles could not hold "1234/1296 kept" at the smallest font

# The label font's size in pixels: a fraction of the tile width, within readable bounds.
FONT_PER_TILE_WIDTH = 1 / 11
MIN_FONT_SIZE = 11
MAX_FONT_SIZE = 24
# Pillow without FreeType has only a bitmap font whose digits are 7 px high, where FreeType's
# are about 0.67 of the size; the bitmap text is resampled by size / 10.5 to match.
_BITMAP_PIXELS_PER_SIZE = 1 / 10.5

Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive), in sheet pixels


def font_size(tile_width: int) -> int:
    """The label font's size for tiles ``tile_width`` pixels wide (every label of a sheet has
    this one size, so they read evenly)."""
    return min(MAX_FONT_SIZE, max(MIN_FONT_SIZE, round(tile_width * FONT_PER_TILE_WIDTH)))


@dataclass(frozen=True)
class LabelFont:
    """Pillow's bundled font at a pixel size, measured and drawn on a fixed baseline so that
    every label of a sheet lines up whatever its letters.

    With FreeType (every Pillow wheel) this is the bundled scalable font at ``size``; without
    it, the bitmap font resampled by ``scale`` to about the same height.
    """

    font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    scale: float
    line_height: int

    @staticmethod
    def of_size(size: int) -> LabelFont:
        font = ImageFont.load_default(size=size)
        scale = 1.0 if isinstance(font, ImageFont.FreeTypeFont) else size * _BITMAP_PIXELS_PER_SIZE
        # The bottom of a reference string with an ascender and a descender, drawn from the
        # top-left: the same for every label, so all share one baseline.
        bottom = font.getbbox("Ag|09")[3]
        return LabelFont(font, scale, math.ceil(bottom * scale))

    def width(self, text: str) -> int:
        return math.ceil(self.font.getlength(text) * self.scale)

    def draw(self, sheet: Image.Image, left: int, top: int, text: str,
             colour: tuple[int, int, int]) -> None:
        """``text`` in ``colour`` with its line box's top-left corner at (left, top)."""
        width = math.ceil(self.font.getlength(text)) + 2
        height = math.ceil(self.line_height / self.scale) + 1
        mask = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask).text((0, 0), text, fill=255, font=self.font)
        if self.scale != 1.0:
            size = (max(1, round(width * self.scale)), max(1, round(height * self.scale)))
            mask = mask.resize(size, Image.LANCZOS)
        sheet.paste(Image.new("RGB", mask.size, colour), (left, top), mask)


def frame_span(unit: int, frames_per_unit: int) -> str:
    """The sampled frames of ``unit``, numbered from 1: "3" or "5-6"."""
    first = unit * frames_per_unit + 1
    return str(first) if frames_per_unit == 1 else f"{first}-{first + frames_per_unit - 1}"


def unit_caption(unit: int, frames_per_unit: int, kept: int, tokens_per_unit: int
                 ) -> tuple[str, str]:
    """The two lines under a unit: which frames it holds, and its one budget."""
    noun = "frame" if frames_per_unit == 1 else "frames"
    return f"{noun} {frame_span(unit, frames_per_unit)}", f"{kept}/{tokens_per_unit} kept"


@dataclass(frozen=True)
class LegendEntry:
    """One explanation in the legend strip: a sample (``key`` says which) and its text."""

    key: str  # "kept", "dropped", "merged", "unit", "count" or "favoured"
    text: str
    sample: Box | None  # where the sample is drawn; None for text-only entries
    text_at: tuple[int, int]  # top-left of the text's line box


@dataclass(frozen=True)
class SheetLayout:
    size: tuple[int, int]
    tile_height: int
    tile_width: int
    frames_per_unit: int
    tiles: list[tuple[int, int]]  # top-left corner of each frame's tile
    units: list[Box]  # around the tiles of each unit
    captions: list[Box]  # below each unit: its bracket (several frames) and its two lines
    legend: Box
    entries: list[LegendEntry]
    font: LabelFont


def default_columns(num_frames: int, frames_per_unit: int = 1) -> int:
    """About 1.5 * sqrt(F) frames a row (a landscape sheet), at most 8 and at most F, rounded
    up to whole units."""
    if num_frames < 1:
        raise ValueError(f"a contact sheet needs at least one frame, got {num_frames}")
    columns = max(1, min(MAX_COLUMNS, num_frames, round(math.sqrt(num_frames) * 1.5)))
    return min(num_frames, math.ceil(columns / frames_per_unit) * frames_per_unit)


def _columns(num_frames: int, frames_per_unit: int, columns: int | None) -> int:
    if columns is None:
        return default_columns(num_frames, frames_per_unit)
    if columns < 1 or columns % frames_per_unit:
        raise ValueError(f"columns must be a positive multiple of the {frames_per_unit} "
                         f"frame(s) of a unit, got {columns}")
    return min(columns, num_frames)


def _tile_shape(frame_height: int, frame_width: int, tile_width: int) -> tuple[int, int]:
    """(height, width) of one frame's tile: tile_width wide, the frame's aspect kept."""
    if frame_height < 1 or frame_width < 1:
        raise ValueError(f"frames must be at least 1x1 pixels, got {frame_height}x{frame_width}")
    if tile_width < MIN_TILE_WIDTH:
        raise ValueError(f"tile_width must be at least {MIN_TILE_WIDTH}, got {tile_width}")
    return max(1, round(frame_height * tile_width / frame_width)), tile_width


def _legend_texts(frames_per_unit: int, merged: bool) -> list[tuple[str, str]]:
    holder = "the frame's" if frames_per_unit == 1 else "the unit's"
    texts = [("kept", "kept token"), ("dropped", "dropped token")]
    if merged:
        texts.append(("merged", "dropped, merged into a kept token"))
    if frames_per_unit > 1:
        texts.append(("unit", f"{frames_per_unit} frames = 1 unit: one mask, one count"))
    texts += [("count", f"k/N kept: k of {holder} N tokens"),
              ("favoured", "orange: budget above the mean")]
    return texts


def _sample_width(key: str, font: LabelFont) -> int:
    """Width of an entry's sample: a swatch a line high, a wider bracket, or none."""
    swatch = font.line_height
    return {"unit": 2 * swatch, "count": 0, "favoured": 0}.get(key, swatch)


def _text_offset(key: str, font: LabelFont) -> int:
    """From an entry's left edge to its text: past the sample and half a line's space."""
    sample = _sample_width(key, font)
    return sample + font.line_height // 2 if sample else 0


def sheet_layout(num_frames: int, frame_height: int, frame_width: int, frames_per_unit: int = 1,
                 columns: int | None = None, tile_width: int = 160, merged: bool = False
                 ) -> SheetLayout:
    """The layout of a sheet of ``num_frames`` frames of ``frame_height`` x ``frame_width``
    pixels in units of ``frames_per_unit``, ``columns`` frames a row (a multiple of the unit,
    default ``default_columns``), each tile ``tile_width`` wide; ``merged`` adds the legend
    entry of merged tokens."""
    if frames_per_unit < 1:
        raise ValueError(f"frames_per_unit must be positive, got {frames_per_unit}")
    if num_frames < 1 or num_frames % frames_per_unit:
        raise ValueError(f"{num_frames} frames do not fill units of {frames_per_unit} frame(s)")
    columns = _columns(num_frames, frames_per_unit, columns)
    tile_height, tile_width = _tile_shape(frame_height, frame_width, tile_width)
    font = LabelFont.of_size(font_size(tile_width))
    units_per_row = columns // frames_per_unit
    unit_width = frames_per_unit * tile_width + (frames_per_unit - 1) * INNER_GAP
    bracket = BRACKET_HEIGHT if frames_per_unit > 1 else 0
    caption_height = bracket + 2 * CAPTION_PAD + 2 * font.line_height
    row_height = tile_height + caption_height + ROW_GAP

    tiles: list[tuple[int, int]] = []
    units: list[Box] = []
    captions: list[Box] = []
    for unit in range(num_frames // frames_per_unit):
        row, position = divmod(unit, units_per_row)
        left = MARGIN + position * (unit_width + UNIT_GAP)
        top = MARGIN + row * row_height
        tiles += [(left + k * (tile_width + INNER_GAP), top) for k in range(frames_per_unit)]
        units.append((left, top, left + unit_width, top + tile_height))
        captions.append((left, top + tile_height, left + unit_width,
                         top + tile_height + caption_height))
    rows = math.ceil(len(units) / units_per_row)
    grid_width = 2 * MARGIN + units_per_row * unit_width + (units_per_row - 1) * UNIT_GAP

    texts = _legend_texts(frames_per_unit, merged)
    widths = [_text_offset(key, font) + font.width(text) for key, text in texts]
    width = max(grid_width, max(widths) + 2 * MARGIN)
    legend_top = MARGIN + rows * row_height
    entries: list[LegendEntry] = []
    x, y = MARGIN, legend_top + MARGIN
    for (key, text), entry_width in zip(texts, widths, strict=True):
        if x > MARGIN and x + entry_width > width - MARGIN:
            x, y = MARGIN, y + font.line_height + LEGEND_LINE_GAP
        sample_width = _sample_width(key, font)
        sample = (x, y, x + sample_width, y + font.line_height) if sample_width else None
        entries.append(LegendEntry(key, text, sample, (x + _text_offset(key, font), y)))
        x += entry_width + LEGEND_ITEM_GAP
    legend_bottom = y + font.line_height + MARGIN
    return SheetLayout(size=(width, legend_bottom), tile_height=tile_height,
                       tile_width=tile_width, frames_per_unit=frames_per_unit, tiles=tiles,
                       units=units, captions=captions, legend=(0, legend_top, width, legend_bottom),
                       entries=entries, font=font)
