"""Tiny video files of every kind the decoders must answer (or refuse), built with PyAV.

Frame ``i`` of every clip is flat grey ``level(i)`` with a white block in its top-left
corner: ``frame_index`` reads the index back from the median, ``is_upright`` checks that the
block is where it belongs (no turn or mirror maps the block onto itself).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

H264 = "libx264" if "libx264" in av.codecs_available else "mpeg4"


def level(i: int) -> int:
    """Grey level of frame i: 8 apart, so lossy coding cannot confuse neighbours."""
    return 4 + 8 * i


def picture(i: int, width: int = 64, height: int = 48) -> np.ndarray:
    image = np.full((height, width, 3), level(i), np.uint8)
    image[: height // 3, : width // 4] = 255
    return image


def frame_index(frame: np.ndarray) -> int:
    return round((float(np.median(frame)) - 4) / 8)


def is_upright(frame: np.ndarray) -> bool:
    height, width = frame.shape[:2]
    corner = frame[: height // 4, : width // 8].mean()
    others = [frame[: height // 4, -width // 8 :], frame[-height // 4 :, : width // 8]]
    return corner > 200 and all(part.mean() < corner - 60 for part in others)


def encode(
    path: Path,
    n: int = 24,
    codec: str = H264,
    fps: int = 12,
    size: tuple[int, int] = (64, 48),
    pix_fmt: str = "yuv420p",
    gop: int = 6,
    container_options: dict[str, str] | None = None,
    codec_options: dict[str, str] | None = None,
    fmt: str | None = None,
    pts: Iterable[int] | None = None,
    extra: Callable[[av.container.OutputContainer], None] | None = None,
    stream_setup: Callable[[av.video.stream.VideoStream], None] | None = None,
) -> Path:
    """Encode frames ``picture(0..n-1)``; ``pts`` (in 1/fps units) gives them irregular
    timestamps; ``extra`` adds streams before the video one; ``stream_setup`` edits the
    video stream (rotation, aspect) before the first frame."""
    width, height = size
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as container:
        if extra is not None:
            extra(container)
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.gop_size = gop
        if codec_options:
            stream.codec_context.options = codec_options
        if stream_setup is not None:
            stream_setup(stream)
        stamps = list(pts) if pts is not None else list(range(n))
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, fps)
        for i, stamp in enumerate(stamps):
            frame = av.VideoFrame.from_ndarray(picture(i, width, height), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = stamp, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def packets(path: Path) -> list[tuple[int, int, int | None, bool]]:
    """(file offset, size, pts, keyframe) of every video packet, in file order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [
            (p.pos, p.size, p.pts, p.is_keyframe)
            for p in container.demux(stream)
            if p.size and p.pos is not None and p.pos >= 0
        ]


def corrupt_one_packet(path: Path, target: int = 10) -> Path:
    """Overwrite the payload of the target-th packet (a non-key one) with noise."""
    found = [p for p in packets(path) if not p[3]]
    pos, size, _, _ = found[min(target, len(found) - 1)]
    data = bytearray(path.read_bytes())
    noise = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    data[pos : pos + size] = noise
    out = path.with_name("corrupt_" + path.name)
    out.write_bytes(bytes(data))
    return out


def truncate(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    out = path.with_name("cut_" + path.name)
    out.write_bytes(data[: int(len(data) * keep)])
    return out


def ts_cut_mid_gop(path: Path) -> Path:
    """Drop the start of a transport stream at a 188-byte packet boundary in the middle of a
    group of pictures (so it starts with frames that reference a missing keyframe)."""
    keys = [p for p in packets(path) if p[3]]
    second_key = keys[1][0]
    start = (second_key // 188) * 188 - 188 * 12  # well inside the first GOP
    data = path.read_bytes()
    start = max(188, start)
    out = path.with_name("midgop_" + path.name)
    out.write_bytes(data[start:])
    return out


def animated_image(path: Path, n: int, image_format: str, durations_ms: list[int] | None = None,
                   ) -> Path:
    images = [Image.fromarray(picture(i)) for i in range(n)]
    durations = durations_ms or [100] * n
    images[0].save(path, format=image_format, save_all=n > 1, append_images=images[1:],
                   duration=durations, loop=0, **({"lossless": True}
                                                  if image_format == "WEBP" else {}))
    return path


def subtitle_tracks(count: int) -> Callable[[av.container.OutputContainer], None]:
    def add(container: av.container.OutputContainer) -> None:
        for _ in range(count):
            container.add_stream("subrip")

    return add


def fragmented_wrong_duration(path: Path) -> Path:
    """Fragmented MP4 whose movie header claims 100 times the real duration."""
    encode(path, container_options={"movflags": "frag_keyframe+empty_moov"})
    data = bytearray(path.read_bytes())
    for box in (b"mvhd", b"mehd", b"tkhd", b"mdhd"):
        at = data.find(box)
        while at != -1:
            version = data[at + 4]
            if box == b"mehd":
                offset, wide = at + 8, version == 1
            elif box == b"tkhd":
                offset, wide = at + (4 + 4 + 24 if version == 1 else 4 + 4 + 16), version == 1
            else:  # mvhd/mdhd: timescale then duration
                offset, wide = at + (4 + 4 + 16 + 4 if version == 1 else 4 + 4 + 8 + 4), \
                    version == 1
            fmt = ">Q" if wide else ">I"
            data[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, 10_000_000)
            at = data.find(box, at + 4)
    path.write_bytes(bytes(data))
    return path


def init_segment_only(path: Path) -> Path:
    """The init segment of a fragmented MP4: ftyp + moov, no fragments."""
    full = encode(path.with_name("full_" + path.name),
                  container_options={"movflags": "frag_keyframe+empty_moov"})
    data = full.read_bytes()
    position, parts = 0, []
    while position < len(data):
        size, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind in (b"ftyp", b"moov"):
            parts.append(data[position : position + size])
        position += size
    path.write_bytes(b"".join(parts))
    return path


def every_packet_broken(path: Path) -> Path:
    """An MPEG-TS whose every video payload is noise."""
    encode(path, codec="mpeg2video", fmt="mpegts")
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(1)
    for pos, size, _, _ in packets(path):
        data[pos : pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def size_change_h264(path: Path, first: tuple[int, int, int] = (64, 48, 4),
                     second: tuple[int, int, int] = (96, 64, 2)) -> Path:
    """A raw H.264 (Annex B) stream whose pictures change size mid-way: two encodes, (width,
    height, frames) each, one after the other; frame ``i`` is ``picture(i)`` throughout."""
    parts = []
    start = 0
    for width, height, count in (first, second):
        part = path.with_name(f"part{start}_{path.name}")
        with av.open(str(part), "w", format="h264") as container:
            stream = container.add_stream(H264, rate=12)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for i in range(start, start + count):
                frame = av.VideoFrame.from_ndarray(picture(i, width, height), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        parts.append(part.read_bytes())
        part.unlink()
        start += count
    path.write_bytes(b"".join(parts))
    return path


# --- FLIC (Autodesk Animator), written by hand: FFmpeg decodes it but has no encoder ---------
# A 128-byte header, then one chunk per frame (magic 0xF1FA) holding sub-chunks: COLOR_256
# (type 4: the palette), BYTE_RUN (type 15: run-length rows) and FLI_COPY (type 16: raw rows).

FLC_MAGIC, FLI_MAGIC, _FRAME_MAGIC = 0xAF12, 0xAF11, 0xF1FA
_COLOR_256, _BYTE_RUN, _FLI_COPY = 4, 15, 16


def _chunk(kind: int, payload: bytes) -> bytes:
    if len(payload) % 2:  # chunks are padded to an even size
        payload += b"\0"
    return struct.pack("<IH", 6 + len(payload), kind) + payload


def _byte_run(indices: np.ndarray) -> bytes:
    """Each row: a (legacy) packet count, then literal packets (a negative count, then the
    bytes), at most 127 bytes each."""
    out = bytearray()
    for row in indices:
        data = bytes(row)
        packets = [data[i:i + 127] for i in range(0, len(data), 127)]
        out.append(len(packets) & 0xFF)
        for packet in packets:
            out += struct.pack("<b", -len(packet)) + packet
    return bytes(out)


def flic(path: Path, n: int = 3, size: tuple[int, int] = (64, 48), speed: int = 0,
         magic: int = FLC_MAGIC) -> Path:
    """A FLIC animation of ``picture(0..n-1)`` (grey, so a grey-ramp palette holds it
    exactly): the first frame a BYTE_RUN chunk after the palette, the others FLI_COPY chunks.
    ``speed`` 0 states no frame delay (as files in the wild do)."""
    width, height = size
    palette = struct.pack("<HBB", 1, 0, 0) + bytes(np.repeat(np.arange(256, dtype=np.uint8), 3))
    frames = []
    for i in range(n):
        grey = picture(i, width, height)[..., 0]
        chunks = ([_chunk(_COLOR_256, palette), _chunk(_BYTE_RUN, _byte_run(grey))] if i == 0
                  else [_chunk(_FLI_COPY, grey.tobytes())])
        body = b"".join(chunks)
        frames.append(struct.pack("<IHH8x", 16 + len(body), _FRAME_MAGIC, len(chunks)) + body)
    header = bytearray(128)
    size_bytes = 128 + sum(len(frame) for frame in frames)
    struct.pack_into("<IHHHHHHI", header, 0, size_bytes, magic, n, width, height, 8, 0, speed)
    if magic == FLC_MAGIC:  # offsets of the first two frames
        struct.pack_into("<II", header, 80, 128, 128 + len(frames[0]))
    path.write_bytes(bytes(header) + b"".join(frames))
    return path
