"""Render the sample clips in this folder: ``python sample_videos/render.py``.

Frames are drawn with numpy and encoded with PyAV (a dev dependency), so the clips are
reproducible without downloading anything. See README.md for what each clip shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

OUT_DIR = Path(__file__).resolve().parent
WIDTH, HEIGHT = 320, 180
FPS = 12

RED = (220, 30, 30)
BLUE = (30, 60, 220)
YELLOW = (250, 220, 40)


def blank(color: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(color, np.uint8), (HEIGHT, WIDTH, 3)).copy()


def disc(img: np.ndarray, cx: float, cy: float, r: float, color: tuple[int, int, int]) -> None:
    yy, xx = np.ogrid[:HEIGHT, :WIDTH]
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = color


def color_change(n: int = 48, change_at: int = 24) -> Iterator[np.ndarray]:
    """A ball bouncing left to right, red before frame ``change_at`` and blue from it."""
    for i in range(n):
        img = blank((235, 235, 235))
        x = 30 + (WIDTH - 60) * i / (n - 1)
        y = HEIGHT - 40 - 90 * abs(np.sin(np.pi * 2 * i / n))
        disc(img, x, y, 22, RED if i < change_at else BLUE)
        yield img


def scene_cut(n: int = 60, cut_at: int = 36) -> Iterator[np.ndarray]:
    """A sunny green field (the sun rising) that cuts at ``cut_at`` to a night skyline."""
    rng = np.random.default_rng(0)
    stars = rng.integers((0, 0), (WIDTH, HEIGHT // 2), size=(40, 2))
    buildings = []  # (x0, x1, top, lit windows mask)
    x = 0
    while x < WIDTH:
        w = int(rng.integers(24, 48))
        top = int(rng.integers(50, 120))
        lit = rng.random(((HEIGHT - top) // 12, w // 10)) < 0.4
        buildings.append((x, min(x + w, WIDTH), top, lit))
        x += w + int(rng.integers(2, 8))
    for i in range(n):
        if i < cut_at:
            img = blank((135, 200, 245))
            img[HEIGHT * 3 // 5 :] = (60, 170, 60)
            disc(img, 250, 80 - 30 * i / cut_at, 20, YELLOW)
        else:
            img = blank((10, 12, 40))
            img[stars[:, 1], stars[:, 0]] = (255, 255, 255)
            disc(img, 40, 35, 14, (230, 230, 210))
            for x0, x1, top, lit in buildings:
                img[top:, x0:x1] = (45, 45, 55)
                for r, c in zip(*np.nonzero(lit), strict=True):
                    y, wx = top + 5 + 12 * r, x0 + 3 + 10 * c
                    if wx + 5 <= x1:
                        img[y : y + 6, wx : wx + 5] = (250, 210, 90)
        yield img


def counting(n: int = 72, first: int = 6, every: int = 12, count: int = 5) -> Iterator[np.ndarray]:
    """Squares appear one at a time (at frames first, first+every, ...) until there are 5."""
    colors = [RED, (40, 160, 60), BLUE, (240, 150, 20), (150, 50, 180)]
    size, gap = 40, 16
    x0 = (WIDTH - count * size - (count - 1) * gap) // 2
    y0 = (HEIGHT - size) // 2
    for i in range(n):
        img = blank((250, 250, 250))
        shown = 0 if i < first else min(count, (i - first) // every + 1)
        for k in range(shown):
            x = x0 + k * (size + gap)
            img[y0 : y0 + size, x : x + size] = colors[k]
        yield img


def write(path: Path, frames: Iterator[np.ndarray]) -> None:
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.thread_count = 1  # threaded x264 is not bit-for-bit reproducible
        for img in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())


def main() -> None:
    clips = {
        "color_change.mp4": color_change(),
        "scene_cut.mp4": scene_cut(),
        "counting.mp4": counting(),
    }
    for name, frames in clips.items():
        path = OUT_DIR / name
        write(path, frames)
        print(f"{path}: {path.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
