"""Recognising what a file is from its first bytes and its MP4/MOV box structure.

decord cannot say whether a file is a still image, an encrypted (DRM) stream, a header
without media data, or a video with a display rotation: it fails with bare or misleading
errors, or decodes garbage. This module answers those questions without decord (and without
PyAV), so ``video`` can check a file before opening it. The MP4 parser reads only box headers,
the top-level layout and a few small boxes of ``moov`` (track header, edit list, handler,
sample description, sample count), never the sample tables' contents or the media data.
"""

from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import VideoError

__all__ = ["Mp4", "Mp4Video", "image_kind", "inspect_mp4", "is_jpeg_stream", "read_head"]

# Top-level box types an ISO BMFF (MP4, MOV, M4V, 3GP) file may start with.
_MP4_FIRST_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"styp"}
_MP4_MAX_TOP_BOXES = 100_000
# Sample entry formats -> FFmpeg decoder names, for when PyAV is not installed.
_FOURCC_CODECS = {
    "avc1": "h264", "avc3": "h264", "hvc1": "hevc", "hev1": "hevc", "mp4v": "mpeg4",
    "av01": "av1", "vp09": "vp9", "vp08": "vp8", "jpeg": "mjpeg", "mjpa": "mjpeg",
    "mjpb": "mjpeg", "s263": "h263", "h263": "h263", "apcn": "prores", "apch": "prores",
    "apcs": "prores", "apco": "prores", "ap4h": "prores", "dvh1": "hevc", "dvhe": "hevc",
}
_ENCRYPTED_ENTRIES = {b"encv", b"drmi"}  # CENC / FairPlay video sample entries


@dataclass(frozen=True)
class Mp4Video:
    """The first video track of an MP4/MOV header (what decord's FFmpeg will pick)."""

    fourcc: str  # sample entry format; the original format when the track is encrypted
    scheme: str | None  # protection scheme ("cenc", "cbcs"...) when encrypted, else None
    rotation: int  # clockwise degrees, from the track header's display matrix
    coded_size: tuple[int, int] | None  # (width, height) in the sample entry
    samples: int | None  # sample count in the sample table (0 in a fragmented file)
    edited: bool  # an edit list starts the presentation past the first sample

    @property
    def codec(self) -> str:
        """FFmpeg's decoder name for ``fourcc`` (the fourcc itself when not known here)."""
        return _FOURCC_CODECS.get(self.fourcc, self.fourcc)


@dataclass(frozen=True)
class Mp4:
    """What an ISO BMFF / QuickTime file's header says: its video track and whether it holds
    any media at all."""

    video: Mp4Video | None  # None: no video track with a sample description
    has_media: bool  # a non-empty mdat box or a movie fragment exists
    fragmented: bool  # samples live in movie fragments (mvex in moov)


def image_kind(head: bytes) -> str | None:
    """The still-image format these first bytes announce, if any."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:2] == b"BM" and head[6:10] == b"\x00\x00\x00\x00":
        return "BMP"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"avif"):
        return "HEIF/AVIF"
    return None


# --- JPEG: one picture, or a Motion JPEG stream (pictures back to back, as IP cameras and
# `ffmpeg -f mjpeg` write them) -------------------------------------------------------------

_JPEG_READ = 64 << 20  # bytes read to find a second picture; a larger first one: a still
_JPEG_NO_LENGTH = {0x01, *range(0xD0, 0xD9)}  # TEM, RST0-7, SOI: markers without a length
_JPEG_SOF = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}  # start of frame (not DHT, JPG, DAC)


@dataclass(frozen=True)
class _JpegPicture:
    end: int  # offset just past its EOI
    size: tuple[int, int] | None  # (width, height) of its frame header
    multi_picture: bool  # an APP2 "MPF" segment: a photo with more pictures after it


def _jpeg_picture(data: bytes, start: int) -> _JpegPicture | None:
    """The JPEG picture at ``start``, walked marker by marker (segments skipped by their
    length, so an EXIF thumbnail inside one is not taken for a picture), or None when there
    is no whole one."""
    if data[start:start + 2] != b"\xff\xd8":
        return None
    pos, size, multi = start + 2, None, False
    while pos < len(data):
        if data[pos] != 0xFF:
            return None
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= len(data):
            return None
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            return _JpegPicture(pos, size, multi)
        if marker in _JPEG_NO_LENGTH:
            continue
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2 or pos + length > len(data):
            return None
        segment = data[pos + 2:pos + length]
        if marker in _JPEG_SOF and len(segment) >= 5:
            size = (int.from_bytes(segment[3:5], "big"), int.from_bytes(segment[1:3], "big"))
        multi = multi or (marker == 0xE2 and segment.startswith(b"MPF\x00"))
        pos += length
        if marker == 0xDA:  # entropy-coded data, up to the next marker
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= len(data):
                    return None
                following = data[pos + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:  # stuffing, restart
                    pos += 2
                elif following == 0xFF:
                    pos += 1
                else:
                    break
    return None


def is_jpeg_stream(path: Path) -> bool:
    """Whether a file that starts as a JPEG holds a second picture of the same size right
    after the first (a Motion JPEG stream), rather than one photo. A photo's extra pictures
    (a camera's Multi-Picture Format previews, gain maps) are declared in its APP2 "MPF"
    segment, and an EXIF thumbnail lies inside a segment: neither makes it a stream."""
    try:
        with path.open("rb") as fh:
            data = fh.read(_JPEG_READ)
    except OSError:
        return False
    first = _jpeg_picture(data, 0)
    if first is None or first.multi_picture or first.size is None:
        return False
    second = _jpeg_picture(data, first.end)
    return second is not None and second.size == first.size


def inspect_mp4(path: Path, head: bytes) -> Mp4 | None:
    """What an MP4/MOV header says about the video track, reading only box headers, the
    top-level layout and the few small boxes of ``moov`` needed (never the sample tables
    or the media data). None when the file is not ISO BMFF or cannot be read."""
    if head[4:8] not in _MP4_FIRST_BOXES:
        return None
    try:
        with path.open("rb") as fh:
            end = os.fstat(fh.fileno()).st_size
            moov: tuple[int, int] | None = None
            has_media = False
            for count, (kind, body, box_end) in enumerate(_boxes(fh, 0, end)):
                if kind == b"moov" and moov is None:
                    moov = (body, box_end)
                elif (kind == b"mdat" and box_end > body) or kind == b"moof":
                    has_media = True
                if moov is not None and has_media:
                    break
                if count >= _MP4_MAX_TOP_BOXES:  # give up looking: assume media is there
                    has_media = True
                    break
            if moov is None:
                return Mp4(video=None, has_media=has_media, fragmented=False)
            video, fragmented = None, False
            for kind, body, box_end in _boxes(fh, *moov):
                if kind == b"mvex":
                    fragmented = True
                elif kind == b"trak" and video is None:
                    video = _video_track(fh, body, box_end)
            return Mp4(video=video, has_media=has_media, fragmented=fragmented)
    except (OSError, struct.error, ValueError):
        return None


def _boxes(fh: BinaryIO, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, body start, end) of each box in [start, end); stops at a malformed header."""
    position = start
    while position + 8 <= end:
        fh.seek(position)
        header = fh.read(16)
        if len(header) < 8:
            return
        size, kind = struct.unpack(">I4s", header[:8])
        body = position + 8
        if size == 1:  # 64-bit size follows the type
            if len(header) < 16:
                return
            size = struct.unpack(">Q", header[8:16])[0]
            body = position + 16
        elif size == 0:  # extends to the end of the enclosing box
            size = end - position
        if size < body - position:
            return
        yield kind, body, min(position + size, end)
        position += size


def _read_box(fh: BinaryIO, body: int, end: int, limit: int = 1 << 16) -> bytes:
    fh.seek(body)
    return fh.read(min(end - body, limit))


def _video_track(fh: BinaryIO, start: int, end: int) -> Mp4Video | None:
    """Parse a ``trak`` box; None unless it is a video track with a sample description."""
    rotation, edited, handler = 0, False, None
    entry: tuple[str, str | None, tuple[int, int] | None] | None = None
    samples: int | None = None
    for kind, body, box_end in _boxes(fh, start, end):
        if kind == b"tkhd":
            rotation = _tkhd_rotation(_read_box(fh, body, box_end))
        elif kind == b"edts":
            edited = _edit_list_starts_late(fh, body, box_end)
        elif kind == b"mdia":
            for inner, inner_body, inner_end in _boxes(fh, body, box_end):
                if inner == b"hdlr":
                    handler = _read_box(fh, inner_body, inner_end)[8:12]
                elif inner == b"minf":
                    entry, samples = _sample_table(fh, inner_body, inner_end)
    if handler != b"vide" or entry is None:
        return None
    fourcc, scheme, coded_size = entry
    return Mp4Video(fourcc, scheme, rotation, coded_size, samples, edited)


def _tkhd_rotation(data: bytes) -> int:
    """Clockwise rotation (0/90/180/270) of a track header's display matrix."""
    offset = 52 if data[:1] == b"\x01" else 40  # matrix after the version 1 / 0 fields
    if len(data) < offset + 20:
        return 0
    a, b, _u, _c, _d = struct.unpack(">5i", data[offset : offset + 20])
    if a == b == 0:
        return 0
    return round(math.degrees(math.atan2(b, a)) / 90) % 4 * 90


def _edit_list_starts_late(fh: BinaryIO, start: int, end: int) -> bool:
    """Whether an edit list starts the presentation past media time 0."""
    for kind, body, box_end in _boxes(fh, start, end):
        if kind != b"elst":
            continue
        data = _read_box(fh, body, box_end)
        wide = data[:1] == b"\x01"
        size = 20 if wide else 12
        for offset in range(8, len(data) - size + 1, size):
            media_time = struct.unpack(
                ">q" if wide else ">i",
                data[offset + (8 if wide else 4) : offset + (16 if wide else 8)],
            )[0]
            if media_time > 0:
                return True
    return False


def _sample_table(
    fh: BinaryIO, start: int, end: int
) -> tuple[tuple[str, str | None, tuple[int, int] | None] | None, int | None]:
    """From a ``minf`` box: (format, protection scheme, coded size) of the first sample
    entry, and the sample count."""
    entry = None
    samples = None
    for kind, body, box_end in _boxes(fh, start, end):
        if kind != b"stbl":
            continue
        for inner, inner_body, inner_end in _boxes(fh, body, box_end):
            if inner == b"stsd":
                entry = _sample_entry(_read_box(fh, inner_body, inner_end))
            elif inner in (b"stsz", b"stz2"):
                data = _read_box(fh, inner_body, inner_end, 12)
                if len(data) == 12:
                    samples = struct.unpack(">I", data[8:12])[0]
    return entry, samples


def _sample_entry(stsd: bytes) -> tuple[str, str | None, tuple[int, int] | None] | None:
    """(format, protection scheme or None, coded size) of the first entry of an ``stsd``."""
    if len(stsd) < 16:
        return None
    size, kind = struct.unpack(">I4s", stsd[8:16])
    end = min(8 + size, len(stsd))
    coded = None
    if end >= 16 + 28:  # visual sample entry: width and height after 24 bytes of fields
        width, height = struct.unpack(">HH", stsd[16 + 24 : 16 + 28])
        coded = (width, height) if width and height else None
    fourcc, scheme = kind, None
    protected = kind in _ENCRYPTED_ENTRIES
    buffer = io.BytesIO(stsd)
    for child, body, child_end in _boxes(buffer, 16 + 78, end):  # after the visual fields
        if child != b"sinf":
            continue
        protected = True
        for inner, inner_body, inner_end in _boxes(buffer, body, child_end):
            data = stsd[inner_body:inner_end]
            if inner == b"frma" and len(data) >= 4:
                fourcc = data[:4]
            elif inner == b"schm" and len(data) >= 8:
                scheme = data[4:8].decode("latin-1").strip("\x00 ") or None
    if protected and scheme is None:
        scheme = "unknown" if kind != b"drmi" else "FairPlay"
    return fourcc.decode("latin-1").strip(), scheme, coded


def read_head(path: Path) -> bytes:
    """The first bytes of a video file; VideoError naming the file when it is missing, a
    folder, unreadable or empty (cheap: the CLI checks this before importing torch)."""
    try:
        if path.is_dir():
            raise VideoError(f"{path}: is a directory, not a video file")
        with path.open("rb") as fh:
            head = fh.read(32)
    except (FileNotFoundError, NotADirectoryError):
        raise VideoError(f"{path}: no such file") from None
    except PermissionError:
        raise VideoError(f"{path}: permission denied") from None
    except OSError as exc:
        raise VideoError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if not head:
        raise VideoError(f"{path}: file is empty")
    return head
