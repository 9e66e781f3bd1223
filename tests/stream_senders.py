"""Local stream writers for the `watch` tests, run as processes: an MPEG-TS file grown as a
live recorder grows it, and MPEG-TS over UDP to 127.0.0.1 that drops and comes back.

    python stream_senders.py file PATH SECONDS [PAUSE_S]
    python stream_senders.py udp PORT SECONDS GAP_S SECONDS2
"""

from __future__ import annotations

import sys
import time

import av
import numpy as np

RATE = 4  # frames per second of the stream
SIDE = 128


def picture(second: int) -> np.ndarray:
    """Noise that changes once per second (and so differs between sampled frames)."""
    return np.random.default_rng(second).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)


def write(target: str, seconds: int, pace_s: float, first_second: int = 0,
          options: dict[str, str] | None = None) -> None:
    """``seconds`` of stream at RATE fps into ``target``, waiting ``pace_s`` after each
    second of it (a live source's pace, or faster)."""
    container = av.open(target, "w", format="mpegts",
                        container_options={"flush_packets": "1", **(options or {})})
    stream = container.add_stream("mpeg4", rate=RATE)
    stream.width = stream.height = SIDE
    stream.pix_fmt = "yuv420p"
    stream.codec_context.gop_size = RATE  # a key frame every second: a late reader starts soon
    for index in range(RATE * seconds):
        frame = av.VideoFrame.from_ndarray(picture(first_second + index // RATE),
                                           format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
        if index % RATE == RATE - 1:
            time.sleep(pace_s)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def main() -> None:
    kind = sys.argv[1]
    if kind == "file":
        pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.2
        write(sys.argv[2], int(sys.argv[3]), pause)
    elif kind == "udp":
        url = f"udp://127.0.0.1:{int(sys.argv[2])}?pkt_size=1316"
        first, gap, second = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
        write(url, first, 1.0)
        time.sleep(gap)  # the source drops ...
        write(url, second, 1.0, first_second=first)  # ... and comes back, times from 0 again
    else:
        raise SystemExit(f"unknown sender {kind!r}")


if __name__ == "__main__":
    main()
