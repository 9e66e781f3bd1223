"""Write the first seconds of a video, re-encoded small: same frame size and rate, H.264.

    python scripts/excerpt_video.py SOURCE TARGET [--seconds 20] [--crf 30]

scripts/gpu_prepare.sh uses it to carry a real 640x360 clip to the GPU machine within the
device tool's 64 MiB (the whole 60-second source would not fit beside the wheels). Needs PyAV.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import av


def excerpt(source: Path, target: Path, seconds: float, crf: int) -> int:
    """Re-encode the frames of the first ``seconds``; returns how many were written."""
    written = 0
    with av.open(str(source)) as reader, av.open(str(target), "w") as writer:
        video = reader.streams.video[0]
        stream = writer.add_stream("libx264", rate=video.average_rate)
        stream.width, stream.height = video.codec_context.width, video.codec_context.height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for frame in reader.decode(video):
            if frame.time is not None and frame.time >= seconds:
                break
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                writer.mux(packet)
            written += 1
        for packet in stream.encode():
            writer.mux(packet)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--crf", type=int, default=30, help="x264 quality (higher: smaller)")
    args = parser.parse_args()
    if not args.source.is_file():
        parser.error(f"{args.source} is not a file")
    frames = excerpt(args.source, args.target, args.seconds, args.crf)
    print(f"{args.target}: {frames} frames, {args.target.stat().st_size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
