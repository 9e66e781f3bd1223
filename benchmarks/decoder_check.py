"""Check the PyAV fallback on real footage: are the frames it returns the frames asked for?

    python benchmarks/decoder_check.py VIDEO [--seconds 12] [--frames 16]

Re-encodes the first ``--seconds`` of VIDEO (any file decord reads, e.g. an H.264 MP4) into
kinds that go to the PyAV decoder: AV1 in MP4, HEVC (x265's open GOPs) in Matroska, H.264 in
an MPEG transport stream, VP9 in a browser-style WebM, MPEG-2 in a program stream, H.264 in
FLV. Samples ``--frames`` frames of each with ``load_video`` and compares every one with the
source frames at the same index and its two neighbours on each side (decoded by decord from
the original): the closest must be the same index. Prints the mean absolute difference to
it (codec loss, a few levels out of 255) and the time ``load_video`` took.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import decord
import numpy as np

from vidcom2_cli.video import load_video

KINDS = {
    "AV1 in MP4": ("av1.mp4", "libsvtav1", None, {"preset": "12"}),
    "HEVC in Matroska": ("hevc.mkv", "libx265", None, {"x265-params": "log-level=none"}),
    "H.264 in MPEG-TS": ("h264.ts", "libx264", "mpegts", {"preset": "ultrafast"}),
    "VP9 in live WebM": ("vp9.webm", "libvpx-vp9", None, {"deadline": "realtime",
                                                          "cpu-used": "8"}),
    "MPEG-2 in MPEG-PS": ("mpeg2.mpg", "mpeg2video", "mpeg", {}),
    "H.264 in FLV": ("h264.flv", "libx264", "flv", {"preset": "ultrafast"}),
}


def transcode(source: Path, target: Path, codec: str, fmt: str | None,
              options: dict[str, str], seconds: float) -> None:
    muxer_options = {"live": "1"} if target.suffix == ".webm" else {}
    with av.open(str(source)) as inp, av.open(str(target), "w", format=fmt,
                                              options=muxer_options) as out:
        stream_in = inp.streams.video[0]
        rate = Fraction(stream_in.average_rate or 25).limit_denominator(1001)
        if codec == "mpeg2video" and rate not in (24, 25, 30, 50, 60):
            rate = Fraction(25)
        stream = out.add_stream(codec, rate=rate)
        stream.width = stream_in.codec_context.width
        stream.height = stream_in.codec_context.height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.options = options
        for number, frame in enumerate(inp.decode(stream_in)):
            if frame.time is not None and frame.time >= seconds:
                break
            copy = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
            copy.pts, copy.time_base = number, 1 / rate
            out.mux(stream.encode(copy))
        out.mux(stream.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args()
    reader = decord.VideoReader(str(args.video))
    folder = Path(tempfile.mkdtemp(prefix="vidcom2-decoder-check-"))
    print(f"source: {args.video.name}, first {args.seconds:g} s; copies in {folder}")
    print(f"{'kind':<20}{'decoder':<9}{'frames':>7}  {'all match':<10}{'mean diff':>10}"
          f"{'load s':>8}")
    failed = False
    for name, (file_name, codec, fmt, options) in KINDS.items():
        target = folder / file_name
        transcode(args.video, target, codec, fmt, options, args.seconds)
        start = time.perf_counter()
        video = load_video(target, num_frames=args.frames)
        seconds = time.perf_counter() - start
        offsets, diffs = [], []
        for frame, index in zip(video.frames, video.indices, strict=True):
            if frame.shape != reader[0].shape:
                offsets.append(None)
                continue
            near = {d: float(np.abs(frame.astype(int) - reader[index + d].asnumpy()).mean())
                    for d in range(-2, 3) if 0 <= index + d < len(reader)}
            offsets.append(min(near, key=near.get))
            diffs.append(near[0])
        matched = all(offset == 0 for offset in offsets)
        failed |= not matched
        print(f"{name:<20}{video.info.decoder:<9}{video.info.frame_count:>7}  "
              f"{'yes' if matched else 'NO ' + str(offsets):<10}"
              f"{np.mean(diffs) if diffs else float('nan'):>10.2f}{seconds:>8.3f}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
