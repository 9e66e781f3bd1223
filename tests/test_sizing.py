"""Frame sizing: the published evaluations' per-frame pixel bounds are the defaults, and frames
come out of the real processors at the sizes the reference rule gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from reference_sizing import reference_smart_resize
from typer.testing import CliRunner

from vidcom2_cli.cli import app
from vidcom2_cli.engine import Engine
from vidcom2_cli.errors import InputError
from vidcom2_cli.models import LoadOptions, load_adapter, sizing
from vidcom2_cli.models.sizing import PUBLISHED_PIXEL_BOUNDS, PixelBounds
from vidcom2_cli.options import SamplingOptions, check_sampling
from vidcom2_cli.work import Request

pytestmark = pytest.mark.slow
SCENE = str(Path(__file__).resolve().parents[1] / "sample_videos" / "scene_cut.mp4")
FAST = ["--frames", "4", "--max-new-tokens", "2", "--device", "cpu", "--json"]

# (height, width) of a small, a medium and a large video
SIZES = {"small": (90, 160), "medium": (360, 640), "large": (1080, 1920)}


def test_published_bounds():
    """VidCom2's lmms-eval settings: Qwen2-VL 3,136 to 602,112 pixels per frame; Qwen2.5-VL
    and Qwen3-VL 200,704 to 1,605,632 (the later Qwen families take Qwen3-VL's)."""
    assert PUBLISHED_PIXEL_BOUNDS["qwen2_vl"] == PixelBounds(3136, 602112)
    for family in ("qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"):
        assert PUBLISHED_PIXEL_BOUNDS[family] == PixelBounds(200704, 1605632)


def test_reference_rule_on_known_numbers():
    # 1080p with Qwen2.5-VL's bounds: rounded to 1092 x 1932 (2,109,744 pixels), above
    # 1,605,632, so shrunk by sqrt(1080 * 1920 / 1,605,632) and floored: 924 x 1680
    assert reference_smart_resize(1080, 1920, 28, 200704, 1605632) == (924, 1680)
    # 90 x 160 is below 200,704: grown to 336 x 616 (aspect ratio kept)
    assert reference_smart_resize(90, 160, 28, 200704, 1605632) == (336, 616)
    # with qwen-vl-utils' clipped maximum (602,112, see README), 1080p becomes 560 x 1008
    assert reference_smart_resize(1080, 1920, 28, 200704, 602112) == (560, 1008)
    # Qwen2-VL keeps a 640 x 360 frame near its size: rounded to 644 x 364 -> 364 x 644
    assert reference_smart_resize(360, 640, 28, 3136, 602112) == (364, 644)


@pytest.fixture
def published_defaults():
    """The real default bounds in place of the tiny checkpoints' for this module's presets."""
    saved = dict(sizing.DEFAULT_PIXEL_BOUNDS)
    sizing.DEFAULT_PIXEL_BOUNDS.update(PUBLISHED_PIXEL_BOUNDS)
    yield
    sizing.DEFAULT_PIXEL_BOUNDS.update(saved)


@pytest.mark.parametrize("preset", ["qwen2-vl-2b", "qwen2.5-vl-7b", "qwen3-vl-8b", "qwen3.5-9b"])
def test_real_processors_size_frames_as_the_reference(published_defaults, preset):
    """The real-size processor and vision config of each family (a preset on the meta device:
    no weights), four frames of each size, sized by default with the published bounds."""
    loaded, adapter = load_adapter(f"random:{preset}", LoadOptions(device="meta"))
    vision = loaded.model.config.vision_config
    factor = vision.patch_size * vision.spatial_merge_size  # 28 (Qwen2/2.5), 32 (Qwen3/3.5)
    bounds = PUBLISHED_PIXEL_BOUNDS[loaded.model_type]
    assert adapter.default_pixel_bounds == bounds
    metadata = {"fps": 24.0, "total_num_frames": 96, "frames_indices": [0, 30, 60, 90]}
    for name, (height, width) in SIZES.items():
        frames = np.full((4, height, width, 3), 128, dtype=np.uint8)
        item = adapter.preprocess(frames, metadata, "What happens?")
        expected = reference_smart_resize(height, width, factor, bounds.min_pixels,
                                          bounds.max_pixels)
        grid = item.inputs["video_grid_thw"][0].tolist()
        assert grid == [2, expected[0] // vision.patch_size, expected[1] // vision.patch_size], (
            name, expected)
        area = expected[0] * expected[1]
        if name == "large":
            assert area <= bounds.max_pixels
        if name == "small" and bounds.min_pixels > height * width:
            assert area >= bounds.min_pixels


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "qwen3_5"])
def test_given_bounds_replace_the_defaults(tiny_checkpoints, family):
    """--max-pixels/--min-pixels reach the processor (the tiny model's 8 px patches, factor 16)."""
    engine = Engine.load(str(tiny_checkpoints(family)), LoadOptions(device="cpu"))
    request = Request(SCENE, "What happens?")  # 320 x 180 frames
    for bounds in (PixelBounds(32 * 32, 48 * 48), PixelBounds(200 * 200, 400 * 400)):
        sampling = SamplingOptions(frames=4, min_pixels=bounds.min_pixels,
                                   max_pixels=bounds.max_pixels)
        item = engine.prepare(request, sampling).item
        height, width = reference_smart_resize(180, 320, 16, bounds.min_pixels,
                                               bounds.max_pixels)
        assert item.inputs["video_grid_thw"][0].tolist() == [2, height // 8, width // 8]
        assert int(item.video_token_mask.sum()) == 2 * (height // 16) * (width // 16)
    # one side given: the other stays the default
    only_max = engine.pixel_bounds(SamplingOptions(max_pixels=50 * 50))
    assert only_max == PixelBounds(engine.adapter.default_pixel_bounds.min_pixels, 2500)


def test_llava_refuses_pixel_bounds(tiny_checkpoints):
    engine = Engine.load(str(tiny_checkpoints("llava_onevision")), LoadOptions(device="cpu"))
    assert engine.adapter.default_pixel_bounds is None
    with pytest.raises(InputError, match=r"--min-pixels/--max-pixels: .*no per-frame pixel bounds"):
        engine.prepare(Request(SCENE, "Q?"), SamplingOptions(frames=2, max_pixels=10000))
    result = CliRunner().invoke(app, ["ask", SCENE, "Q?", "-m",
                                      str(tiny_checkpoints("llava_onevision")), *FAST,
                                      "--max-pixels", "10000"])
    assert result.exit_code == 2 and "no per-frame pixel bounds" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("options", "message"), [
    ({"min_pixels": 0}, "--min-pixels: must be at least 1"),
    ({"max_pixels": -5}, "--max-pixels: must be at least 1"),
    ({"min_pixels": 5000, "max_pixels": 4000}, "min 5000 is above max 4000"),
])
def test_bad_bounds_are_refused_before_loading(options, message):
    with pytest.raises(InputError, match=message):
        check_sampling(SamplingOptions(**options))


@pytest.mark.parametrize("command", ["ask", "bench", "batch", "chat"])
def test_every_command_takes_the_pixel_options(tiny_checkpoints, tmp_path, command):
    model = str(tiny_checkpoints("qwen2_vl"))
    pixels = ["--min-pixels", "1024", "--max-pixels", "2304"]  # 48 x 48 at most
    if command == "ask":
        args = ["ask", SCENE, "Q?"]
    elif command == "chat":
        args = ["chat", SCENE]
    elif command == "bench":
        args = ["bench", SCENE, "--ratios", "1,0.5", "--repeats", "1", "--warmup", "0"]
    else:
        source = tmp_path / "in.jsonl"
        source.write_text(json.dumps({"id": "a", "video": str(SCENE), "question": "Q?"}) + "\n")
        args = ["batch", str(source), "--out", str(tmp_path / "out.jsonl")]
    fast = [flag for flag in FAST if command != "batch" or flag != "--json"]
    result = CliRunner().invoke(app, [*args, "-m", model, *fast, *pixels], input="Q?\n")
    assert result.exit_code == 0, result.output
    if command == "batch":
        record = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    elif command == "bench":
        record = {"tokens": {"visual_full": json.loads(result.stdout)[0]["visual_full"]}}
    else:
        record = json.loads(result.stdout.splitlines()[0])
    height, width = reference_smart_resize(180, 320, 16, 1024, 2304)
    visual = record["tokens"]["visual_full"]
    assert visual == 2 * (height // 16) * (width // 16)


@pytest.mark.parametrize(("shape", "expected"), [
    ((2, 3, 4096, 3), (2, 21, 4096, 3)),  # 4096 / 21 = 195: within 200:1
    ((1, 4096, 3, 3), (1, 4096, 21, 3)),
    ((1, 2, 400, 3), (1, 2, 400, 3)),  # exactly 200:1 is allowed
    ((1, 48, 64, 3), (1, 48, 64, 3)),
])
def test_frames_beyond_200_to_1_are_letterboxed_for_the_qwen_processors(shape, expected):
    frames = np.full(shape, 255, np.uint8)
    boxed = sizing.within_aspect(frames)
    assert boxed.shape == expected
    height, width = boxed.shape[1:3]
    assert max(height, width) <= sizing.MAX_ASPECT * min(height, width)
    assert int(boxed.sum()) == int(frames.sum())  # the picture is all there, the rest black
    if boxed.shape != frames.shape:  # centred: black on both sides
        edges = (boxed[:, 0], boxed[:, -1]) if expected[1] > shape[1] else (
            boxed[:, :, 0], boxed[:, :, -1])
        assert all(int(edge.max()) == 0 for edge in edges)
