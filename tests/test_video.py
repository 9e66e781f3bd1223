"""Decoding and frame sampling (vidcom2_cli.video) on tiny clips rendered here with PyAV."""

from __future__ import annotations

import os
import re
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import av
import decord
import numpy as np
import pytest
from PIL import Image

from vidcom2_cli.decoders import decord_backend
from vidcom2_cli.video import (
    SampledVideo,
    VideoError,
    load_video,
    probe,
    sample_indices,
)

CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"
DECODED_NAME = {"libx264": "h264", "mpeg4": "mpeg4"}[CODEC]
SAMPLE_VIDEOS = Path(__file__).resolve().parent.parent / "sample_videos"


def level(i: int) -> int:
    """Flat grey level of frame i: 8 apart, so lossy coding cannot confuse neighbours."""
    return 4 + 8 * i


def frame_index(frame: np.ndarray) -> int:
    return round((float(frame.mean()) - 4) / 8)


def render(path: Path, n: int, fps: int = 12, faststart: bool = False) -> Path:
    """64x48 clip whose frame i is flat grey ``level(i)``; a keyframe every 5 frames so that
    sampling has to seek, and (with libx264) B-frames so decode order != display order."""
    assert n <= 31, "levels must stay below 256"
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(CODEC, rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = 5
        for i in range(n):
            img = np.full((48, 64, 3), level(i), np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())
    return path


def encode(
    path: Path,
    images: list[np.ndarray],
    fps: int = 12,
    options: dict[str, str] | None = None,
    cw: int = 0,
    lead: int = 0,
    codec: str = CODEC,
) -> Path:
    """Encode RGB images (H x W x 3 uint8) with a keyframe every 5 frames.

    ``options`` go to the muxer (e.g. encryption); ``cw`` writes a display rotation
    (clockwise degrees) into the header; ``lead`` shifts every timestamp so the first
    ``lead`` frames fall before the presentation start, the edit list a stream-copy cut
    between keyframes leaves (their keyframe must stay decodable, so they stay in the file).
    """
    height, width = images[0].shape[:2]
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 5
        if codec == "libx264" and width * height > 1_000_000:
            stream.codec_context.options = {"preset": "ultrafast"}
        if cw:
            stream.set_display_rotation(-cw)  # PyAV takes counter-clockwise degrees
        for image in [*images, None]:  # None flushes the encoder
            frame = None if image is None else av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                if lead:
                    shift = round(lead / (fps * packet.time_base))
                    packet.pts -= shift
                    packet.dts -= shift
                container.mux(packet)
    return path


def levels(n: int, width: int = 64, height: int = 48) -> list[np.ndarray]:
    return [np.full((height, width, 3), level(i), np.uint8) for i in range(n)]


needs_rotation_writer = pytest.mark.skipif(
    not hasattr(av.video.stream.VideoStream, "set_display_rotation"),
    reason="this PyAV cannot write a display rotation",
)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 frames at 12 fps (2.5 s)."""
    return render(tmp_path_factory.mktemp("clips") / "clip.mp4", 30)


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 frames at 12 fps."""
    return render(tmp_path_factory.mktemp("clips") / "short.mp4", 5)


def recognised(video: SampledVideo) -> list[int]:
    return [frame_index(f) for f in video.frames]


# --- probe -----------------------------------------------------------------------------------


def test_probe_fields(clip: Path) -> None:
    info = probe(clip)
    assert info.path == str(clip)
    assert info.frame_count == 30
    assert info.fps == pytest.approx(12.0)
    assert info.duration_s == pytest.approx(2.5)
    assert (info.width, info.height) == (64, 48)
    assert info.codec == DECODED_NAME
    assert info.rotation == 0


# --- sample_indices ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame_count", "num_frames"),
    [(1440, 32), (30, 8), (30, 30), (31, 7), (100, 1), (1000, 64), (33, 32)],
)
def test_default_sampling_is_numpy_linspace(frame_count: int, num_frames: int) -> None:
    expected = np.linspace(0, frame_count - 1, num_frames, dtype=int).tolist()
    assert sample_indices(frame_count, num_frames=num_frames) == expected


def test_default_num_frames_is_32() -> None:
    assert sample_indices(1440) == np.linspace(0, 1439, 32, dtype=int).tolist()


def test_fps_sampling_steps_through_video_time() -> None:
    assert sample_indices(1440, fps=1.0, source_fps=24.0, max_frames=1000) == list(
        range(0, 1440, 24)
    )
    assert sample_indices(1440, fps=2.0, source_fps=24.0, max_frames=1000) == list(
        range(0, 1440, 12)
    )
    # 30 fps source at 4 fps: every 7.5 frames, floored.
    assert sample_indices(30, fps=4.0, source_fps=30.0) == [0, 7, 15, 22]
    # fps mode ignores num_frames.
    assert sample_indices(48, num_frames=3, fps=1.0, source_fps=12.0) == [0, 12, 24, 36]


def test_fps_sampling_over_the_cap_is_evenly_respaced() -> None:
    assert sample_indices(1440, fps=2.0, source_fps=24.0, max_frames=32) == (
        np.linspace(0, 1439, 32, dtype=int).tolist()
    )
    assert len(sample_indices(1440, fps=2.0, source_fps=24.0, max_frames=120)) == 120


@pytest.mark.parametrize(
    "kwargs",
    [{"num_frames": 32}, {"num_frames": 6}, {"fps": 30.0, "source_fps": 12.0}],
)
def test_fewer_frames_than_asked_gives_each_frame_once(kwargs: dict[str, float]) -> None:
    assert sample_indices(5, **kwargs) == [0, 1, 2, 3, 4]


def test_at_least_one_frame() -> None:
    assert sample_indices(1, num_frames=8) == [0]
    assert sample_indices(100, fps=0.001, source_fps=25.0) == [0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_frames": 0},
        {"num_frames": -3},
        {"fps": 0.0, "source_fps": 24.0},
        {"fps": -1.0, "source_fps": 24.0},
        {"fps": float("nan"), "source_fps": 24.0},
        {"fps": 1.0},  # no source_fps
        {"fps": 1.0, "source_fps": 24.0, "max_frames": 0},
    ],
)
def test_sample_indices_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(VideoError):
        sample_indices(100, **kwargs)


def test_sample_indices_rejects_empty_video() -> None:
    with pytest.raises(VideoError, match="frame_count"):
        sample_indices(0, num_frames=4)


# --- load_video --------------------------------------------------------------------------------


@pytest.mark.parametrize("num_frames", [1, 7, 12, 30])
def test_decoded_frames_match_indices(clip: Path, num_frames: int) -> None:
    video = load_video(clip, num_frames=num_frames)
    assert video.indices == np.linspace(0, 29, num_frames, dtype=int).tolist()
    assert video.frames.shape == (num_frames, 48, 64, 3)
    assert video.frames.dtype == np.uint8
    assert recognised(video) == video.indices
    assert video.padded == 0


def test_load_video_fps_mode(clip: Path) -> None:
    video = load_video(clip, fps=4.0)  # 12 fps source: every 3rd frame
    assert video.indices == list(range(0, 30, 3))
    assert recognised(video) == video.indices
    capped = load_video(clip, fps=4.0, max_frames=4)
    assert capped.indices == [0, 9, 19, 29]
    assert recognised(capped) == capped.indices


def test_short_video_gives_every_frame_once(short_clip: Path) -> None:
    video = load_video(short_clip, num_frames=32)
    assert video.indices == [0, 1, 2, 3, 4]
    assert recognised(video) == [0, 1, 2, 3, 4]


def test_multiple_of_pads_with_last_frame(clip: Path, short_clip: Path) -> None:
    video = load_video(clip, num_frames=7, multiple_of=2)
    assert video.padded == 1
    assert len(video.frames) == len(video.indices) == 8
    assert video.indices[-1] == video.indices[-2] == 29
    assert np.array_equal(video.frames[-1], video.frames[-2])
    assert recognised(video) == video.indices

    assert load_video(clip, num_frames=8, multiple_of=2).padded == 0

    short = load_video(short_clip, num_frames=32, multiple_of=4)
    assert short.indices == [0, 1, 2, 3, 4, 4, 4, 4]
    assert short.padded == 3
    assert recognised(short) == short.indices


def test_metadata_for_hf_processors(clip: Path) -> None:
    video = load_video(clip, num_frames=3, multiple_of=2)
    assert video.metadata() == {
        "fps": pytest.approx(12.0),
        "frames_indices": [0, 14, 29, 29],
        "total_num_frames": 30,
        "duration": pytest.approx(2.5),
    }


def test_load_video_info_matches_probe(clip: Path) -> None:
    assert load_video(clip, num_frames=2).info == probe(clip)


def test_missing_frame_rate_falls_back_to_timestamps(
    clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Containers without an average frame rate make decord report 0/0 = nan.
    monkeypatch.setattr(decord.VideoReader, "get_avg_fps", lambda self: float("nan"))
    video = load_video(clip, fps=4.0)
    assert video.info.fps == pytest.approx(12.0)
    assert video.indices == list(range(0, 30, 3))


def test_frames_stay_numpy_under_another_decord_bridge(clip: Path) -> None:
    pytest.importorskip("torch")
    decord.bridge.set_bridge("torch")
    try:
        video = load_video(clip, num_frames=4)
    finally:
        decord.bridge.set_bridge("native")
    assert isinstance(video.frames, np.ndarray)
    assert recognised(video) == video.indices


# --- odd but valid videos ----------------------------------------------------------------------


def _asymmetric(width: int, height: int) -> np.ndarray:
    """White block top-left, grey block top-right: no flip or turn maps it onto itself."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 3, : width // 4] = 255
    image[: height // 3, -width // 4 :] = 128
    return image


@needs_rotation_writer
@pytest.mark.parametrize("cw", [90, 180, 270])
@pytest.mark.parametrize("size", [(64, 48), (96, 64)], ids=["64x48", "96x64"])
@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_rotated_videos_come_out_upright(
    tmp_path: Path, container: str, size: tuple[int, int], cw: int
) -> None:
    # decord turns MP4 frames itself (and, for 48-pixel-wide results, mislays their rows);
    # it does not see Matroska's rotation at all: either way the frames must be upright.
    stored = _asymmetric(*size)
    path = encode(tmp_path / f"turned.{container}", [stored] * 3, cw=cw)
    upright = np.rot90(stored, k=-cw // 90)
    video = load_video(path, num_frames=2)
    assert video.frames.shape == (2, *upright.shape)
    assert video.frames.flags["C_CONTIGUOUS"]
    for frame in video.frames:
        assert np.abs(frame.astype(int) - upright).mean() < 8
    info = probe(path)
    assert info.rotation == video.info.rotation == cw
    assert (info.width, info.height) == (upright.shape[1], upright.shape[0])


@pytest.mark.parametrize("width", [16, 48])
def test_widths_decord_lays_out_wrongly_still_decode(tmp_path: Path, width: int) -> None:
    # FFmpeg pads these widths' RGB rows to a multiple of the width; decord then reports 4 or
    # 6 channels per pixel and its get_batch fails.
    path = encode(tmp_path / "narrow.mp4", levels(12, width=width))
    video = load_video(path, num_frames=4, multiple_of=2)
    assert video.frames.shape == (4, 48, width, 3)
    assert recognised(video) == video.indices == [0, 3, 7, 11]
    assert (probe(path).width, probe(path).height) == (width, 48)


@pytest.mark.parametrize("value", [0, 255], ids=["black", "white"])
def test_constant_videos_load(tmp_path: Path, value: int) -> None:
    path = encode(tmp_path / "flat.mp4", [np.full((48, 64, 3), value, np.uint8)] * 8)
    video = load_video(path, num_frames=4)
    assert video.frames.shape == (4, 48, 64, 3)
    assert np.abs(video.frames.astype(int) - value).max() <= 2
    assert video.info.frame_count == 8


def test_one_frame_video(tmp_path: Path) -> None:
    path = render(tmp_path / "one.mp4", 1)
    info = probe(path)
    assert (info.frame_count, info.duration_s) == (1, pytest.approx(1 / 12))
    video = load_video(path, num_frames=32)
    assert video.indices == [0] and recognised(video) == [0]
    assert load_video(path, fps=0.5).indices == [0]
    paired = load_video(path, num_frames=8, multiple_of=2)
    assert (paired.indices, paired.padded, paired.frames.shape[0]) == ([0, 0], 1, 2)


@pytest.mark.parametrize("lead", [3, 7])
def test_edit_list_lead_in_frames_are_not_counted(tmp_path: Path, lead: int) -> None:
    # A stream-copy cut between keyframes keeps the frames from the previous keyframe, hidden
    # by an edit list. decord counts them in len(reader) (30 here) but never returns them, and
    # its index i is a different frame depending on whether it seeks or decodes forward.
    path = encode(tmp_path / "cut.mp4", levels(30), lead=lead)
    shown = 30 - lead
    assert probe(path).frame_count == shown
    assert probe(path).duration_s == pytest.approx(shown / 12)
    for num_frames in (3, 9, 64):
        video = load_video(path, num_frames=num_frames)
        assert video.indices == sample_indices(shown, num_frames=num_frames)
        assert recognised(video) == [i + lead for i in video.indices]
    video = load_video(path, fps=5.0)
    assert recognised(video) == [i + lead for i in video.indices]


def test_4k_video_decodes_only_the_sampled_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = encode(tmp_path / "uhd.mp4", levels(3, width=3840, height=2160))
    requested: list[list[int]] = []
    get_batch = decord.VideoReader.get_batch

    def spy(self, indices):
        requested.append(list(indices))
        return get_batch(self, indices)

    monkeypatch.setattr(decord.VideoReader, "get_batch", spy)
    frame_bytes = 3840 * 2160 * 3
    tracemalloc.start()
    try:
        video = load_video(path, num_frames=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert video.frames.shape == (2, 2160, 3840, 3)
    assert recognised(video) == video.indices == [0, 2]
    assert requested == [[0, 2]]
    # The two frames handed out, plus little: nothing else of frame size was held.
    assert peak < 2.5 * frame_bytes
    assert (video.info.width, video.info.height) == (3840, 2160)


# --- errors ------------------------------------------------------------------------------------


def _truncated(tmp_path: Path, faststart: bool) -> Path:
    full = render(tmp_path / "full.mp4", 30, faststart=faststart)
    data = full.read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


def _audio_only(tmp_path: Path) -> Path:
    path = tmp_path / "speech.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 8000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _make_dir(tmp_path: Path) -> Path:
    path = tmp_path / "folder.mp4"
    path.mkdir()
    return path


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return make


def _top_level_boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, start, end) of an MP4's top-level boxes (PyAV writes 32-bit sizes)."""
    boxes, position = [], 0
    while position < len(data):
        size, kind = struct.unpack(">I4s", data[position : position + 8])
        boxes.append((kind, position, position + size))
        position += size
    return boxes


def _header_only(tmp_path: Path, empty_mdat: bool) -> Path:
    """An MP4 whose moov (sample tables and all) promises 30 frames but whose mdat is gone
    or empty."""
    data = render(tmp_path / "full.mp4", 30, faststart=True).read_bytes()
    parts = []
    for kind, start, end in _top_level_boxes(data):
        if kind != b"mdat":
            parts.append(data[start:end])
        elif empty_mdat:
            parts.append(struct.pack(">I4s", 8, b"mdat"))
    path = tmp_path / "header_only.mp4"
    path.write_bytes(b"".join(parts))
    return path


def _zeroed_frame_data(tmp_path: Path) -> Path:
    data = bytearray(render(tmp_path / "full.mp4", 30).read_bytes())
    for kind, start, end in _top_level_boxes(bytes(data)):
        if kind == b"mdat":
            data[start + 8 : end] = bytes(end - start - 8)
    path = tmp_path / "zeroed.mp4"
    path.write_bytes(bytes(data))
    return path


def _encrypted(tmp_path: Path, fragmented: bool) -> Path:
    """CENC (AES-CTR) as the MP4 muxer writes it: encv sample entry, sinf/schm/tenc boxes."""
    options = {
        "encryption_scheme": "cenc-aes-ctr",
        "encryption_key": "00112233445566778899aabbccddeeff",
        "encryption_kid": "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
    }
    if fragmented:
        options["movflags"] = "frag_keyframe+empty_moov"
    return encode(tmp_path / "drm.mp4", levels(12), options=options)


def _image(name: str, image_format: str) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        path = tmp_path / name
        Image.fromarray(_asymmetric(64, 48)).save(path, format=image_format)
        return path

    return make


BAD_FILES: dict[str, Callable[[Path], Path]] = {
    "missing": lambda tmp_path: tmp_path / "missing.mp4",
    "directory": _make_dir,
    "text renamed .mp4": _write("notes.mp4", b"this is not a video\n" * 50),
    "empty": _write("empty.mp4", b""),
    "truncated (index at end)": lambda tmp_path: _truncated(tmp_path, faststart=False),
    "audio only": _audio_only,
    "header-only mp4 (no mdat)": lambda tmp_path: _header_only(tmp_path, empty_mdat=False),
    "header-only mp4 (empty mdat)": lambda tmp_path: _header_only(tmp_path, empty_mdat=True),
    "mp4 with zeroed frame data": _zeroed_frame_data,
    "encrypted mp4 (CENC)": lambda tmp_path: _encrypted(tmp_path, fragmented=False),
    "encrypted fragmented mp4": lambda tmp_path: _encrypted(tmp_path, fragmented=True),
    "PNG image": _image("photo.png", "PNG"),
    "JPEG image": _image("photo.jpg", "JPEG"),
    "GIF image": _image("photo.gif", "GIF"),
    "PNG renamed .mp4": _image("photo.mp4", "PNG"),
}
# What the message must say for the cases a user could not guess from "corrupt video".
REASONS = {
    "audio only": "no video stream",
    "header-only mp4 (no mdat)": "holds no decodable frames",
    "header-only mp4 (empty mdat)": "holds no decodable frames",
    "mp4 with zeroed frame data": "holds no decodable frames",
    "encrypted mp4 (CENC)": "is encrypted (DRM",
    "encrypted fragmented mp4": "is encrypted (DRM",
    "PNG image": "is a PNG image, not a video",
    "JPEG image": "is a JPEG image, not a video",
    "GIF image": "is a GIF image, not a video",
    "PNG renamed .mp4": "is a PNG image, not a video",
}


def _assert_clean(error: VideoError, path: Path) -> None:
    message = str(error)
    assert path.name in message
    assert "\n" not in message
    # No chained decord traceback: no cause, and any context is suppressed.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


@pytest.mark.parametrize("make", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_files_raise_video_error(tmp_path: Path, make: Callable[[Path], Path]) -> None:
    path = make(tmp_path)
    for call in (probe, load_video):
        with pytest.raises(VideoError) as excinfo:
            call(path)
        _assert_clean(excinfo.value, path)


@pytest.mark.parametrize(("name", "reason"), REASONS.items(), ids=REASONS.keys())
def test_odd_files_say_what_is_wrong(tmp_path: Path, name: str, reason: str) -> None:
    path = BAD_FILES[name](tmp_path)
    for call in (probe, load_video):
        with pytest.raises(VideoError, match=re.escape(reason)) as excinfo:
            call(path)
        _assert_clean(excinfo.value, path)


def test_encryption_is_caught_before_decord_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _encrypted(tmp_path, fragmented=False)

    def refuse(*args, **kwargs):
        raise AssertionError("decord must not open an encrypted file")

    monkeypatch.setattr(decord, "VideoReader", refuse)
    with pytest.raises(VideoError, match="scheme 'cenc'"):
        probe(path)


def test_decord_messages_lose_every_prefix() -> None:
    nested = RuntimeError(
        "[07:40:20] /src/threaded_decoder.cc:292: [07:40:20] /src/threaded_decoder.cc:218: "
        "Check failed: avcodec_send_packet\nStack trace: ..."
    )
    assert decord_backend.reason(nested) == "Check failed: avcodec_send_packet"


def test_unreadable_file_raises_video_error(
    clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "locked.mp4"
    path.write_bytes(clip.read_bytes())
    path.chmod(0)
    if os.geteuid() == 0:  # root reads any file: make the open fail as it would for a user
        real_open = Path.open

        def denied(self: Path, *args, **kwargs):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(VideoError, match="permission denied") as excinfo:
        probe(path)
    _assert_clean(excinfo.value, path)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_frames": 0}, {"num_frames": -1}, {"fps": 0.0}, {"fps": -2.0}, {"multiple_of": 0}],
)
def test_bad_arguments_raise_video_error_naming_the_file(
    clip: Path, kwargs: dict[str, float]
) -> None:
    with pytest.raises(VideoError) as excinfo:
        load_video(clip, **kwargs)
    _assert_clean(excinfo.value, clip)


def test_video_error_is_a_value_error() -> None:
    assert issubclass(VideoError, ValueError)


# --- committed sample clips --------------------------------------------------------------------


def _red(frame: np.ndarray) -> int:
    r, g, b = frame.astype(int).transpose(2, 0, 1)
    return int(((r > 150) & (g < 100) & (b < 100)).sum())


def _blue(frame: np.ndarray) -> int:
    r, _, b = frame.astype(int).transpose(2, 0, 1)
    return int(((b > 150) & (r < 100)).sum())


def _squares(frame: np.ndarray) -> int:
    return round(int((frame.min(axis=2) < 200).sum()) / (40 * 40))


@pytest.mark.parametrize(
    ("name", "frame_count", "before", "after"),
    [
        # README.md promises these frames; each check is (frame, predicate).
        (
            "color_change.mp4",
            48,
            (23, lambda f: _red(f) > 500 and _blue(f) == 0),
            (24, lambda f: _blue(f) > 500 and _red(f) == 0),
        ),
        ("scene_cut.mp4", 60, (35, lambda f: f.mean() > 120), (36, lambda f: f.mean() < 80)),
        ("counting.mp4", 72, (53, lambda f: _squares(f) == 4), (54, lambda f: _squares(f) == 5)),
    ],
)
def test_sample_videos_decode_and_change_where_documented(
    name: str,
    frame_count: int,
    before: tuple[int, Callable[[np.ndarray], bool]],
    after: tuple[int, Callable[[np.ndarray], bool]],
) -> None:
    path = SAMPLE_VIDEOS / name
    info = probe(path)
    assert (info.frame_count, info.width, info.height) == (frame_count, 320, 180)
    assert 12 <= info.fps <= 15
    assert 3 <= info.duration_s <= 6
    video = load_video(path, num_frames=frame_count)
    assert video.indices == list(range(frame_count))
    for index, holds in (before, after):
        assert holds(video.frames[index]), f"{name} frame {index}"


def test_sample_videos_are_small() -> None:
    sizes = [
        (SAMPLE_VIDEOS / n).stat().st_size
        for n in ("color_change.mp4", "scene_cut.mp4", "counting.mp4")
    ]
    assert sum(sizes) < 1_000_000
