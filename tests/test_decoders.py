"""Real-world files (issue 15): every kind FFmpeg decodes is answered with the right frames,
upright; files with no decodable video frame are refused on one line.

Each kind is a tiny clip built here with PyAV (or Pillow for animated images); frame ``i``
shows grey ``level(i)`` and a white block top-left, so every returned frame is checked
against the index it claims to be.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from odd_videos import (
    FLI_MAGIC,
    H264,
    animated_image,
    corrupt_one_packet,
    encode,
    every_packet_broken,
    flic,
    fragmented_wrong_duration,
    frame_index,
    init_segment_only,
    is_upright,
    packets,
    picture,
    size_change_h264,
    ts_cut_mid_gop,
)
from PIL import Image
from typer.testing import CliRunner

from vidcom2_cli.decoders import orientation, same_size
from vidcom2_cli.video import VideoError, load_video, probe, sample_indices

N = 24  # frames in every clip


def _subtitled(path: Path) -> Path:
    srt = path.with_suffix(".srt")
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")

    def add(container: av.container.OutputContainer) -> None:
        with av.open(str(srt)) as source:
            for _ in range(20):
                container.add_stream_from_template(source.streams[0])

    return encode(path, extra=add)


def _data_tracks(path: Path) -> Path:
    def add(container: av.container.OutputContainer) -> None:
        for _ in range(3):
            container.add_data_stream("klv")

    return encode(path, fmt="mpegts", extra=add)


def _two_video_streams(path: Path) -> Path:
    """A 32x24 preview track first, then the main 64x48 one."""
    with av.open(str(path), "w") as container:
        preview = container.add_stream(H264, rate=12)
        preview.width, preview.height, preview.pix_fmt = 32, 24, "yuv420p"
        main = container.add_stream(H264, rate=12)
        main.width, main.height, main.pix_fmt = 64, 48, "yuv420p"
        main.codec_context.gop_size = 6
        flat = np.full((24, 32, 3), 200, np.uint8)
        for i in range(N):
            container.mux(preview.encode(av.VideoFrame.from_ndarray(flat, format="rgb24")))
            container.mux(main.encode(av.VideoFrame.from_ndarray(picture(i), format="rgb24")))
        container.mux(preview.encode())
        container.mux(main.encode())
    return path


def _cut_index(path: Path) -> Path:
    """An MP4 whose index (moov first) promises N frames, cut before the third keyframe's
    data: two whole groups of pictures (12 frames) are left."""
    full = encode(path.with_name("whole_" + path.name),
                  container_options={"movflags": "faststart"})
    keyframes = sorted(pos for pos, _, _, key in packets(full) if key)
    path.write_bytes(full.read_bytes()[: keyframes[2]])
    return path


def _midgop(path: Path) -> Path:
    return ts_cut_mid_gop(encode(path.with_name("whole.ts"), fmt="mpegts"))


def _corrupt(path: Path) -> Path:
    return corrupt_one_packet(encode(path.with_name("clean.mp4")), target=10)


# name -> (maker, frames expected, index of the source frame shown first, decoder expected)
ANSWERED: dict[str, tuple[Callable[[Path], Path], int, int, str | None]] = {
    "av1.mp4": (lambda p: encode(p, codec="libsvtav1", size=(64, 64)), N, 0, "pyav"),
    "av1.ivf": (lambda p: encode(p, codec="libsvtav1", size=(64, 64)), N, 0, "pyav"),
    "vp8.ivf": (lambda p: encode(p, codec="libvpx"), N, 0, "pyav"),
    "vp9 browser.webm": (lambda p: encode(p, codec="libvpx-vp9",
                                          container_options={"live": "1"}), N, 0, "pyav"),
    "hevc.mp4": (lambda p: encode(p, codec="libx265",
                                  codec_options={"x265-params": "log-level=none"}), N, 0, "pyav"),
    "h264 10-bit.mp4": (lambda p: encode(p, pix_fmt="yuv420p10le"), N, 0, "pyav"),
    "h264 4:4:4.mp4": (lambda p: encode(p, pix_fmt="yuv444p"), N, 0, None),
    "raw annex b.h264": (lambda p: encode(p, fmt="h264"), N, 0, "pyav"),
    "h264.ts": (lambda p: encode(p, fmt="mpegts"), N, 0, "pyav"),
    "mpeg2.ts": (lambda p: encode(p, codec="mpeg2video", fmt="mpegts", fps=25), N, 0, "pyav"),
    "mpeg2 program stream.mpg": (lambda p: encode(p, codec="mpeg2video", fmt="mpeg", fps=25),
                                 N, 0, "pyav"),
    "no keyframe index.flv": (lambda p: encode(p, fmt="flv"), N, 0, "pyav"),
    "mpeg2.mxf": (lambda p: encode(p, codec="mpeg2video", fmt="mxf", fps=25), N, 0, "pyav"),
    "fragmented wrong duration.mp4": (fragmented_wrong_duration, N, 0, None),
    "vp8.ogg": (lambda p: encode(p, codec="libvpx", fmt="ogg"), N, 0, "pyav"),
    "h263.3gp": (lambda p: encode(p, codec="h263", size=(128, 96)), N, 0, None),
    "mpeg4.avi": (lambda p: encode(p, codec="mpeg4"), N, 0, None),
    "mjpeg.avi": (lambda p: encode(p, codec="mjpeg", pix_fmt="yuvj420p"), N, 0, None),
    # JPEG pictures back to back, no container, no timing (IP cameras, `ffmpeg -f mjpeg`)
    "motion jpeg stream.mjpeg": (lambda p: encode(p, codec="mjpeg", fmt="mjpeg",
                                                  pix_fmt="yuvj420p"), N, 0, "pyav"),
    "animated.gif": (lambda p: animated_image(p, 12, "GIF"), 12, 0, "pillow"),
    "animated.png": (lambda p: animated_image(p, 12, "PNG"), 12, 0, "pillow"),
    "animated.webp": (lambda p: animated_image(p, 12, "WEBP"), 12, 0, "pillow"),
    "twenty subtitle tracks.mkv": (_subtitled, N, 0, None),
    "three data tracks first.ts": (_data_tracks, N, 0, "pyav"),
    "two video streams.mkv": (_two_video_streams, N, 0, "pyav"),
    "index promises more.mp4": (_cut_index, 12, 0, None),
    "ts cut mid-gop.ts": (_midgop, 18, 6, "pyav"),
}


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kinds")
    built = {}
    for number, (name, (make, *_rest)) in enumerate(ANSWERED.items()):
        folder = root / str(number)
        folder.mkdir()
        built[name] = make(folder / ("clip." + name.rsplit(".", 1)[1]))
    return built


@pytest.mark.parametrize("name", ANSWERED)
def test_every_kind_is_answered_with_the_right_frames(kinds: dict[str, Path], name: str) -> None:
    _, count, first, decoder = ANSWERED[name]
    path = kinds[name]
    info = probe(path)
    assert info.frame_count == count
    if decoder is not None:
        assert info.decoder == decoder
    video = load_video(path, num_frames=7)
    assert video.indices == sample_indices(count, num_frames=7)
    assert video.info.frame_count == count
    assert [frame_index(f) for f in video.frames] == [first + i for i in video.indices]
    assert all(is_upright(frame) for frame in video.frames)
    assert video.substituted_frames == {}
    every = load_video(path, num_frames=count)
    assert [frame_index(f) for f in every.frames] == list(range(first, first + count))


def test_h263_pixels_are_stretched_to_display_aspect(kinds: dict[str, Path]) -> None:
    # 128x96 H.263 (SQCIF) has 12:11 pixels: a player shows it 140 pixels wide.
    info = probe(kinds["h263.3gp"])
    assert (info.width, info.height) == (140, 96)


def test_non_square_pixels_from_the_header(tmp_path: Path) -> None:
    def wide_pixels(stream: av.video.stream.VideoStream) -> None:
        stream.codec_context.sample_aspect_ratio = Fraction(2, 1)

    path = encode(tmp_path / "anamorphic.mp4", n=4, stream_setup=wide_pixels)
    video = load_video(path, num_frames=2)
    assert video.frames.shape == (2, 48, 128, 3)
    assert [frame_index(f) for f in video.frames] == [0, 3]
    assert all(is_upright(frame) for frame in video.frames)


def test_second_video_stream_reports_the_one_used(kinds: dict[str, Path]) -> None:
    info = probe(kinds["two video streams.mkv"])
    assert info.stream_index == 1 and (info.width, info.height) == (64, 48)


def test_corrupt_packet_uses_the_nearest_decodable_frame(tmp_path: Path) -> None:
    path = _corrupt(tmp_path / "clip.mp4")
    video = load_video(path, num_frames=N)
    assert video.info.frame_count == N
    assert video.info.decoder == "pyav"  # decord gives up on the broken packet
    assert len(video.substituted_frames) == 1
    (missing, used), = video.substituted_frames.items()
    assert abs(missing - used) == 1
    assert np.array_equal(video.frames[missing], video.frames[used])
    # Frames of the groups of pictures before and after the damage are intact.
    recognised = [frame_index(f) for f in video.frames]
    assert recognised[:12] == list(range(12)) and recognised[18:] == list(range(18, N))


def test_variable_frame_rate_samples_by_time(tmp_path: Path) -> None:
    # 12 frames at irregular times (in 1/12 s): fps sampling picks the frame shown at 0 s,
    # 0.5 s, 1 s, ... not every n-th frame.
    stamps = [0, 1, 2, 6, 7, 8, 20, 21, 22, 23, 40, 41]
    for suffix in ("mkv", "mp4"):
        path = encode(tmp_path / f"vfr.{suffix}", n=12, pts=stamps)
        video = load_video(path, fps=2.0)
        assert video.indices == [0, 3, 5, 9, 11], suffix
        assert [frame_index(f) for f in video.frames] == video.indices
        # 12 frames over 41/12 s, the last shown for an average frame: not 12 / nominal fps.
        assert video.info.duration_s == pytest.approx(41 / 12 * 12 / 11, abs=0.02), suffix


@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
@pytest.mark.parametrize("flips", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["none", "hflip", "vflip", "both"])
def test_display_matrix_rotations_and_mirrors(tmp_path: Path, degrees: int,
                                              flips: tuple[bool, bool]) -> None:
    hflip, vflip = flips
    path = encode(tmp_path / "turned.mp4", n=3, stream_setup=lambda s: s.set_display_rotation(
        degrees, hflip=hflip, vflip=vflip))
    # PyAV's meaning: counter-clockwise rotation, then the mirrors.
    shown = np.rot90(picture(0), k=degrees // 90)
    if hflip:
        shown = shown[:, ::-1]
    if vflip:
        shown = shown[::-1]
    video = load_video(path, num_frames=1)
    assert video.frames.shape[1:] == shown.shape
    assert np.abs(video.frames[0].astype(int) - shown).mean() < 8
    assert video.info.mirrored == (hflip != vflip)


def test_orientation_of_a_missing_or_empty_matrix() -> None:
    assert orientation(None) == (0, False)
    assert orientation(bytes(36)) == (0, False)


# --- refused -----------------------------------------------------------------------------------


def _still(image_format: str) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        Image.fromarray(picture(0)).save(path, format=image_format)
        return path

    return make


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _header_only(path: Path) -> Path:
    full = encode(path.with_name("full.mp4"), container_options={"movflags": "faststart"})
    first = min(pos for pos, *_ in packets(full))
    path.write_bytes(full.read_bytes()[: first - 8])  # moov kept, mdat gone
    return path


REFUSED: dict[str, tuple[Callable[[Path], Path], str]] = {
    "audio only": (lambda p: _audio_only(p.with_suffix(".m4a")), "no video stream"),
    "header only": (_header_only, "holds no decodable frames"),
    "every packet broken": (lambda p: every_packet_broken(p.with_suffix(".ts")), "video"),
    "init segment without media": (init_segment_only, "holds no decodable frames"),
    "text renamed .mp4": (lambda p: (p.write_text("not a video\n" * 40), p)[1], "not a"),
    "empty file": (lambda p: (p.write_bytes(b""), p)[1], "file is empty"),
    "still GIF": (lambda p: _still("GIF")(p.with_suffix(".gif")), "is a GIF image"),
    "still PNG": (lambda p: _still("PNG")(p.with_suffix(".png")), "is a PNG image"),
    "still WebP": (lambda p: _still("WEBP")(p.with_suffix(".webp")), "is a WebP image"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_files_without_a_decodable_frame_are_refused(tmp_path: Path, name: str) -> None:
    from vidcom2_cli.cli import app

    make, needle = REFUSED[name]
    path = make(tmp_path / "clip.mp4")
    with pytest.raises(VideoError, match=needle):
        load_video(path)
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0]


def test_file_cut_inside_a_group_of_pictures_gives_the_frames_it_holds(tmp_path: Path) -> None:
    full = encode(tmp_path / "whole.mp4", container_options={"movflags": "faststart"})
    in_file_order = sorted(packets(full))
    path = tmp_path / "cut.mp4"
    path.write_bytes(full.read_bytes()[: in_file_order[15][0]])
    # The 15 frames whose data is there, in display order (B-frames make that a gappy set).
    step = math.gcd(*(pts for _, _, pts, _ in in_file_order))  # one frame's duration
    held = sorted(pts // step for _, _, pts, _ in in_file_order[:15])
    assert held != list(range(15))
    video = load_video(path, num_frames=15)
    assert video.info.frame_count == 15
    assert [frame_index(f) for f in video.frames] == held


# --- streams without keyframe flags, and streams that change size (issue 27) -------------------


def _plain_decode(path: Path) -> list[np.ndarray]:
    """What FFmpeg gives decoding the video stream from its start, every frame."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


# Files whose demuxer flags no keyframe packet (RoQ) or whose decoder flags no key frame (the
# rest): they were refused as "holds no decodable frames" (RoQ: "no video packets"), or, with
# every packet claiming to be a keyframe (RPZA), seeking gave frames built on missing ones.
UNFLAGGED: dict[str, Callable[[Path], Path]] = {
    "one 4096x3 frame, no rate.flc": lambda p: flic(p, n=1, size=(4096, 3)),
    "three frames.flc": lambda p: flic(p, n=3),
    "three frames.fli": lambda p: flic(p, n=3, magic=FLI_MAGIC),
    "qtrle.mov": lambda p: encode(p, n=12, codec="qtrle", pix_fmt="rgb24", gop=4),
    "rpza.mov": lambda p: encode(p, n=12, codec="rpza", pix_fmt="rgb555le", gop=4),
    "svq1.mov": lambda p: encode(p, n=12, codec="svq1", pix_fmt="yuv410p", gop=4),
    "msvideo1.avi": lambda p: encode(p, n=12, codec="msvideo1", pix_fmt="rgb555le", gop=4),
    "flashsv.flv": lambda p: encode(p, n=12, codec="flashsv", pix_fmt="bgr24", gop=4),
    "flashsv2.flv": lambda p: encode(p, n=12, codec="flashsv2", pix_fmt="bgr24", gop=4),
    "roq.roq": lambda p: encode(p, n=12, codec="roqvideo", pix_fmt="yuvj444p", fps=25),
}


@pytest.mark.parametrize("name", UNFLAGGED)
def test_streams_without_keyframe_flags_give_what_a_plain_decode_gives(tmp_path: Path,
                                                                       name: str) -> None:
    path = UNFLAGGED[name](tmp_path / name)
    plain = _plain_decode(path)
    info = probe(path)
    assert info.frame_count == len(plain) and info.decoder == "pyav"
    assert info.fps > 0 and info.duration_s > 0
    for count in (len(plain), 2, 1):  # every frame; the first and the last; the first
        video = load_video(path, num_frames=count)
        assert video.indices == sample_indices(len(plain), num_frames=count)
        assert all(np.array_equal(plain[index], frame)
                   for index, frame in zip(video.indices, video.frames, strict=True))
    late = load_video(path, num_frames=len(plain), fps=info.fps / max(len(plain) - 1, 1))
    assert all(np.array_equal(plain[index], frame)
               for index, frame in zip(late.indices, late.frames, strict=True))


def test_flic_frames_are_the_pictures_drawn(tmp_path: Path) -> None:
    video = load_video(flic(tmp_path / "clip.flc", n=3), num_frames=3)
    assert [frame_index(frame) for frame in video.frames] == [0, 1, 2]
    assert all(is_upright(frame) for frame in video.frames)


@pytest.mark.parametrize(("counts", "size"), [((4, 2), (64, 48)), ((2, 4), (96, 64)),
                                              ((3, 3), (64, 48))],
                         ids=["first size more common", "second size more common", "a tie"])
def test_a_stream_that_changes_size_comes_out_at_its_most_common_size(
        tmp_path: Path, counts: tuple[int, int], size: tuple[int, int]) -> None:
    path = size_change_h264(tmp_path / "mixed.h264", (64, 48, counts[0]), (96, 64, counts[1]))
    assert [frame.shape[:2] for frame in _plain_decode(path)] == (
        [(48, 64)] * counts[0] + [(64, 96)] * counts[1])
    info = probe(path)
    assert (info.width, info.height) == size
    assert info.frame_sizes == {"64x48": counts[0], "96x64": counts[1]}
    video = load_video(path, num_frames=6)
    assert video.frames.shape == (6, size[1], size[0], 3)
    assert video.resized == (counts[1] if size == (64, 48) else counts[0])
    assert [frame_index(frame) for frame in video.frames] == list(range(6))
    assert all(is_upright(frame) for frame in video.frames)
    assert video.info.frame_sizes == info.frame_sizes
    # Two sampled frames, one of each size: still the stream's most common size.
    pair = load_video(path, num_frames=2)
    assert pair.frames.shape[1:3] == (size[1], size[0]) and pair.resized == 1


def test_a_stream_of_one_size_reports_none() -> None:
    assert probe(Path(__file__).resolve().parents[1] / "sample_videos" /
                 "color_change.mp4").frame_sizes is None


def test_same_size_takes_the_most_common_size_and_counts_what_it_scaled() -> None:
    small, large = np.zeros((2, 4, 3), np.uint8), np.full((4, 8, 3), 200, np.uint8)
    frames, resized = same_size([small, large, large])
    assert frames.shape == (3, 4, 8, 3) and resized == 1
    assert (frames[0] == 0).all() and (frames[1:] == 200).all()
    tie, resized = same_size([small, large])
    assert tie.shape == (2, 2, 4, 3) and resized == 1  # a tie: the first size
    repeated, resized = same_size([large, small, small], (2, 4))  # a given size wins
    assert repeated.shape == (3, 2, 4, 3) and resized == 1
    same, resized = same_size([small, small])
    assert same.shape == (2, 2, 4, 3) and resized == 0


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_odd_files_through_info_and_ask(tmp_path: Path, tiny_checkpoints, family: str) -> None:
    """The two real-world files of issue 27 through the commands: a raw H.264 stream that
    changes size (it ended in a traceback, exit 1) and a FLIC of one 4096x3 frame with no
    rate (refused, exit 2); Qwen takes the 1365:1 frame letterboxed to 200:1."""
    from vidcom2_cli.cli import app

    runner = CliRunner()
    mixed = size_change_h264(tmp_path / "mixed.h264")  # 4 frames of 64x48, then 2 of 96x64
    wide = flic(tmp_path / "wide.flc", n=1, size=(4096, 3))
    info = runner.invoke(app, ["info", str(mixed), "--json"])
    assert info.exit_code == 0, info.stderr
    assert json.loads(info.stdout)["frame_sizes"] == {"64x48": 4, "96x64": 2}
    info = runner.invoke(app, ["info", str(wide), "--json"])
    assert info.exit_code == 0, info.stderr
    described = json.loads(info.stdout)
    assert (described["frame_count"], described["width"], described["height"]) == (1, 4096, 3)
    model = ["--model", str(tiny_checkpoints(family)), "--max-new-tokens", "2", "--device", "cpu"]
    cache = ["--feature-cache", str(tmp_path / "cache")]
    for state in ("miss", "hit"):  # the count survives the feature cache
        asked = runner.invoke(app, ["ask", str(mixed), "What?", "--frames", "6", *model,
                                    *cache, "--json"])
        assert asked.exit_code == 0, asked.stderr
        answer = json.loads(asked.stdout)
        assert answer["feature_cache"] == state
        assert answer["frames"]["size"] == [64, 48] and answer["frames"]["resized"] == 2
        assert answer["frames"]["indices"] == list(range(6))
    asked = runner.invoke(app, ["ask", str(wide), "What?", "--frames", "4", *model, "--json"])
    assert asked.exit_code == 0, asked.stderr
    frames = json.loads(asked.stdout)["frames"]
    assert frames["size"] == [4096, 3] and frames["source_frames"] == 1
    assert set(frames["indices"]) == {0} and frames["resized"] == 0
    shown = runner.invoke(app, ["ask", str(mixed), "What?", "--frames", "6", *model])
    assert shown.exit_code == 0, shown.stderr
    assert "the video changes size: 2 of 6 frames scaled to 64x48" in shown.stdout


def _photo(path: Path, before_scan: bytes = b"", after: bytes = b"") -> Path:
    """A JPEG photo, with ``before_scan`` inserted after its SOI and ``after`` appended."""
    buffer = io.BytesIO()
    Image.fromarray(picture(3, 96, 64)).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    path.write_bytes(data[:2] + before_scan + data[2:] + after)
    return path


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def test_a_photo_stays_a_photo_whatever_it_carries(tmp_path: Path) -> None:
    """Only pictures of one size back to back make a Motion JPEG stream: a photo with an
    EXIF thumbnail, or with Multi-Picture Format images after it, is still refused."""
    thumbnail = io.BytesIO()
    Image.fromarray(picture(0, 32, 24)).save(thumbnail, format="JPEG")
    plain = _photo(tmp_path / "plain.jpg")
    photos = [plain,
              _photo(tmp_path / "thumb.jpg", _segment(0xE1, b"Exif\0\0" + thumbnail.getvalue())),
              _photo(tmp_path / "mpf.jpg", _segment(0xE2, b"MPF\0" + bytes(12)),
                     plain.read_bytes()),
              _photo(tmp_path / "preview after.jpg", after=thumbnail.getvalue())]
    for photo in photos:
        with pytest.raises(VideoError, match="is a JPEG image, not a video"):
            probe(photo)
    stream = tmp_path / "two pictures.jpg"
    stream.write_bytes(plain.read_bytes() * 2)  # the same size twice: a (short) stream
    assert probe(stream).frame_count == 2
