"""Decoding and frame sampling (vidcom2_cli.video) on tiny clips rendered here with PyAV."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import av
import decord
import numpy as np
import pytest

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


def test_probe_without_pyav_reports_unknown_codec(
    clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    info = probe(clip)
    assert (info.codec, info.rotation) == ("unknown", None)
    assert info.frame_count == 30


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


BAD_FILES: dict[str, Callable[[Path], Path]] = {
    "missing": lambda tmp_path: tmp_path / "missing.mp4",
    "directory": _make_dir,
    "text renamed .mp4": _write("notes.mp4", b"this is not a video\n" * 50),
    "empty": _write("empty.mp4", b""),
    "truncated (index at end)": lambda tmp_path: _truncated(tmp_path, faststart=False),
    "truncated (index first)": lambda tmp_path: _truncated(tmp_path, faststart=True),
    "audio only": _audio_only,
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
