"""Sampling 32 frames from a one-hour video: only the frames around the samples are decoded.

    python benchmarks/long_video.py [--minutes 60] [--frames 32] [--repeats 3] [--remux ts]

Renders (once, cached in the temp folder) a 30 fps H.264 clip of the given length at 128x72
with a keyframe every 250 frames, each frame carrying its own index as a bar code. Then
times ``probe`` and ``load_video(path, num_frames=32)``, checks that every returned frame is
the one asked for, and compares the cost with decoding consecutive frames: a measured
slice, extrapolated to the whole video. decord seeks to the keyframe before each sample and
decodes forward from there, so about ``32 x 250 / 2`` frames are decoded, not all of them.
``--remux ts`` (or mkv, flv, ...) copies the stream into that container first and samples
the copy: a transport stream goes to the PyAV decoder, which indexes the packets itself.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from bisect import bisect_right
from pathlib import Path

import decord
import numpy as np
from machine import cpu_model

from vidcom2_cli.video import load_video, probe

WIDTH, HEIGHT, FPS, GOP = 128, 72, 30, 250
BITS, BIT_WIDTH = 17, 7  # 2**17 > 108000 frames; 17 bars of 7 pixels fit in 128
BAR_ROWS = HEIGHT // 2  # bar code on top, a moving gradient below (so frames are not trivial)



def frame_luma(index: int, columns: np.ndarray, rows: np.ndarray) -> np.ndarray:
    luma = ((columns + rows + 2 * index) % 200 + 28).astype(np.uint8)
    bits = (index >> np.arange(BITS)) & 1
    luma[:BAR_ROWS, : BITS * BIT_WIDTH] = np.repeat(bits * 200 + 28, BIT_WIDTH)
    return luma


def read_index(frame: np.ndarray) -> int:
    """The index a decoded RGB frame carries in its bar code."""
    centres = frame[BAR_ROWS // 2, BIT_WIDTH // 2 : BITS * BIT_WIDTH : BIT_WIDTH].mean(axis=1)
    return int(sum(1 << bit for bit, value in enumerate(centres) if value > 128))


def render(path: Path, frame_count: int) -> float:
    """Encode the clip (libx264 veryfast, B-frames, GOP 250); returns seconds taken."""
    import av

    start = time.perf_counter()
    partial = path.with_suffix(".partial.mp4")
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH]
    chroma = np.full((HEIGHT // 2, WIDTH), 128, np.uint8)
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size = GOP
        stream.codec_context.options = {"preset": "veryfast", "scenecut": "0"}
        for index in range(frame_count):
            planes = np.vstack([frame_luma(index, columns, rows), chroma])
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            container.mux(stream.encode(frame))
            if index % 18000 == 0 and index:
                print(f"  rendered {index / FPS / 60:.0f} min", file=sys.stderr)
        container.mux(stream.encode())
    os.replace(partial, path)
    return time.perf_counter() - start


def remux(source: Path, extension: str) -> Path:
    """Copy the video stream into another container, without re-encoding."""
    import av

    target = source.with_suffix(f".{extension}")
    if target.exists():
        return target
    partial = target.with_name(target.stem + ".partial" + target.suffix)
    with av.open(str(source)) as inp, av.open(str(partial), "w",
                                              format=None if extension != "ts" else "mpegts"
                                              ) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            out.mux(packet)
    os.replace(partial, target)
    return target


def timed(function, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="clip length (default 60)")
    parser.add_argument("--frames", type=int, default=32, help="frames to sample (default 32)")
    parser.add_argument("--slice", type=int, default=3000,
                        help="consecutive frames decoded to measure the per-frame cost")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--remux", help="container to copy the clip into first (ts, mkv, ...)")
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "vidcom2-bench")
    args = parser.parse_args()
    frame_count = round(args.minutes * 60 * FPS)
    if frame_count < 1:
        parser.error("--minutes gives no frames")

    args.cache.mkdir(parents=True, exist_ok=True)
    path = args.cache / f"long_{args.minutes:g}min_{WIDTH}x{HEIGHT}_{FPS}fps_gop{GOP}.mp4"
    if path.exists():
        render_note = "cached"
    else:
        print(f"rendering {frame_count} frames to {path} ...", file=sys.stderr)
        render_note = f"rendered in {render(path, frame_count):.1f} s"

    mp4 = path
    if args.remux:
        path = remux(mp4, args.remux)
    cores = os.cpu_count()
    print(f"machine: {cpu_model()}, {cores} cores; python {platform.python_version()}, "
          f"decord {decord.__version__}, numpy {np.__version__}")
    print(f"video: {path.name}, {frame_count} frames ({frame_count / FPS / 60:g} min), "
          f"{path.stat().st_size / 1e6:.1f} MB, {render_note}")

    open_s, reader = timed(lambda: decord.VideoReader(str(mp4), ctx=decord.cpu(0)),
                           args.repeats)
    keys = reader.get_key_indices()
    probe_s, info = timed(lambda: probe(path), args.repeats)
    load_s, video = timed(lambda: load_video(path, num_frames=args.frames), args.repeats)
    pairs = zip(video.indices, video.frames, strict=True)
    wrong = [i for i, frame in pairs if read_index(frame) != i]
    if wrong:
        sys.exit(f"frames {wrong} came back as other frames")

    width = min(args.slice, len(reader))
    slice_s, _ = timed(lambda: decord.VideoReader(str(mp4), ctx=decord.cpu(0)).get_batch(
        list(range(width))), args.repeats)
    per_frame_s = max(slice_s - open_s, 1e-9) / width
    decode_all_s = per_frame_s * info.frame_count
    # decord seeks to the keyframe at or before a sample and decodes forward to it (or on
    # from the previous sample when both share a group of pictures).
    decoded, previous = 0, -1
    for index in video.indices:
        keyframe = keys[max(bisect_right(keys, index) - 1, 0)]
        decoded += index - (previous if previous >= keyframe else keyframe - 1)
        previous = index
    equivalent = (load_s - open_s) / per_frame_s

    rows = [
        ("open (decord index of all packets)", open_s, "0", "reads the file, decodes nothing"),
        ("probe (open + first frame)", probe_s, "1", f"{info.frame_count} frames, "
         f"{info.fps:g} fps, {info.width}x{info.height}, decoder {info.decoder}"),
        (f"load_video(num_frames={args.frames})", load_s, f"{decoded} (keyframe -> sample)",
         f"~{equivalent:.0f} frames' decode time after opening; all frames verified"),
        (f"decode {width} consecutive frames", slice_s, str(width),
         f"{per_frame_s * 1e6:.1f} us/frame ({1 / per_frame_s:.0f} frames/s) after opening"),
        ("decode every frame (extrapolated)", open_s + decode_all_s, str(info.frame_count),
         f"{(open_s + decode_all_s) / load_s:.0f}x the load_video time"),
    ]
    print(f"median of {args.repeats} runs each; {len(keys)} keyframes (GOP {GOP})")
    print(f"{'step':<40}{'time s':>9}  {'frames decoded':<26}note")
    for name, seconds, frames, note in rows:
        print(f"{name:<40}{seconds:>9.3f}  {frames:<26}{note}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak_mb:.0f} MB "
          f"(sampled frames: {video.frames.nbytes / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
