"""The vidcom2 command, in-process (typer's CliRunner) and as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from vidcom2_cli.cli import app
from vidcom2_cli.heatmap import contact_sheet_size
from vidcom2_cli.models.registry import ADAPTERS

pytestmark = pytest.mark.slow
SAMPLES = Path(__file__).resolve().parents[1] / "sample_videos"
CLIP = SAMPLES / "color_change.mp4"
runner = CliRunner()

ASK_KEYS = ["answer", "model", "method", "ratio", "frames.indices", "frames.count",
            "tokens.visual_full", "tokens.visual_kept", "tokens.per_frame_kept",
            "tokens.prompt_full", "tokens.prompt_kept", "tokens.generated", "timing_ms.prefill",
            "timing_ms.decode_per_token", "timing_ms.vision", "timing_ms.compress",
            "timing_ms.total", "memory.peak_bytes"]


def invoke(*args: str):
    return runner.invoke(app, [str(arg) for arg in args])


def ask(checkpoint: Path, *extra: str, video: Path = CLIP, question: str = "What happens?"):
    return invoke("ask", video, question, "--model", checkpoint, "--frames", "6",
                  "--max-new-tokens", "4", "--device", "cpu", *extra)


def lookup(payload: dict, dotted: str):
    for part in dotted.split("."):
        payload = payload[part]
    return payload


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_ask_json_is_one_object_with_every_key(tiny_checkpoints, family):
    result = ask(tiny_checkpoints(family), "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)  # exactly one JSON document, nothing else on stdout
    for key in ASK_KEYS:
        lookup(payload, key)
    tokens = payload["tokens"]
    units = payload["frames"]["count"] // payload["frames"]["per_unit"]
    assert len(tokens["per_frame_kept"]) == units
    assert sum(tokens["per_frame_kept"]) == tokens["visual_kept"] - tokens["visual_structural"]
    assert tokens["prompt_full"] - tokens["prompt_kept"] == (
        tokens["visual_full"] - tokens["visual_kept"])
    assert payload["frames"]["indices"] == sorted(payload["frames"]["indices"])
    assert payload["ratio"] == 0.25 and payload["method"] == "vidcom2"


def test_ask_pads_odd_frame_counts_for_qwen(tiny_checkpoints):
    result = ask(tiny_checkpoints("qwen2_vl"), "--json", "--frames", "5")
    payload = json.loads(result.stdout)
    assert payload["frames"]["count"] == 6 and payload["frames"]["padded"] == 1
    assert payload["frames"]["indices"][-1] == payload["frames"]["indices"][-2]
    assert len(payload["tokens"]["per_frame_kept"]) == 3


def test_ask_human_output_renders_every_section(tiny_checkpoints):
    result = ask(tiny_checkpoints("llava_onevision"), "--method", "random+fca")
    assert result.exit_code == 0, result.stderr
    for section in ("Tokens", "visual", "prompt", "Retained tokens", "largest budgets",
                    "Timing", "prefill (time to first token)", "decode", "peak memory"):
        assert section in result.stdout
    assert "random+fca R=0.25" in result.stdout


def test_ask_quiet_prints_only_the_answer(tiny_checkpoints):
    quiet = ask(tiny_checkpoints("llava_onevision"), "--quiet")
    full = json.loads(ask(tiny_checkpoints("llava_onevision"), "--json").stdout)
    assert quiet.exit_code == 0
    assert quiet.stdout.strip() == full["answer"]


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_ask_heatmap_writes_a_png_of_the_expected_size(tiny_checkpoints, tmp_path, family):
    """Sized for the family's temporal units: Qwen's 2-frame units are captioned once each."""
    target = tmp_path / "sheet.png"
    result = ask(tiny_checkpoints(family), "--heatmap", target, "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["frames"]["per_unit"] == (2 if family.startswith("qwen") else 1)
    with Image.open(target) as image:
        assert image.format == "PNG"
        assert image.size == contact_sheet_size(6, 180, 320,
                                                frames_per_unit=payload["frames"]["per_unit"])
    assert payload["heatmap"] == str(target)


@pytest.mark.parametrize(("args", "needle"), [
    (["--ratio", "0"], "--ratio"),
    (["--ratio", "1.5"], "--ratio"),
    (["--method", "magic"], "--method"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--heatmap", "/no/such/folder/x.png"], "--heatmap"),
    (["--frames", "0"], "--frames"),
    (["--fps", "-1"], "--fps"),
])
def test_bad_options_exit_2_with_one_line(tiny_checkpoints, args, needle):
    result = ask(tiny_checkpoints("llava_onevision"), *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_missing_video_exits_2_naming_the_file(tiny_checkpoints, tmp_path):
    missing = tmp_path / "nope.mp4"
    result = ask(tiny_checkpoints("llava_onevision"), video=missing)
    assert result.exit_code == 2
    assert str(missing) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_empty_question_exits_2(tiny_checkpoints):
    result = ask(tiny_checkpoints("llava_onevision"), question="   ")
    assert result.exit_code == 2
    assert "question" in result.stderr


def test_bad_model_directory_exits_2(tmp_path):
    result = invoke("ask", CLIP, "What?", "--model", tmp_path, "--device", "cpu")
    assert result.exit_code == 2
    assert "config.json" in result.stderr


def test_bench_gives_a_row_per_ratio_and_method(tiny_checkpoints):
    result = invoke("bench", CLIP, "--model", tiny_checkpoints("qwen2_vl"), "--frames", "4",
                    "--ratios", "1.0,0.5,0.25", "--methods", "vidcom2,random", "--repeats", "1",
                    "--warmup", "0", "--max-new-tokens", "3", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(row["method"], row["ratio"]) for row in rows] == [
        ("vidcom2", 1.0), ("vidcom2", 0.5), ("vidcom2", 0.25),
        ("random", 1.0), ("random", 0.5), ("random", 0.25)]
    full = rows[0]
    assert full["same_answer"] and full["speedup"] == 1.0
    assert full["visual_kept"] == full["visual_full"]
    for row in rows:
        assert row["vision_ms"] == full["vision_ms"]  # one encoder run serves every row
        assert row["video_decode_ms"] == full["video_decode_ms"] > 0  # decoded once for all
        stages = sum(row[key] for key in ("video_decode_ms", "preprocess_ms", "vision_ms",
                                          "compress_ms", "generation_ms"))
        assert row["end_to_end_ms"] == pytest.approx(stages, abs=0.01)
        assert row["visual_kept"] <= full["visual_kept"]
        assert row["prompt_length"] == full["prompt_length"] - (
            full["visual_kept"] - row["visual_kept"])


def test_bench_human_table_renders(tiny_checkpoints):
    result = invoke("bench", CLIP, "--model", tiny_checkpoints("llava_onevision"), "--frames",
                    "4", "--ratios", "1,0.25", "--methods", "vidcom2", "--repeats", "1",
                    "--max-new-tokens", "2", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "speed-up" in result.stdout and "measured once for all rows" in result.stdout


def test_bench_rejects_bad_ratio_list():
    result = invoke("bench", CLIP, "--ratios", "1,half")
    assert result.exit_code == 2 and "--ratios" in result.stderr


def test_models_lists_every_family():
    payload = json.loads(invoke("models", "--json").stdout)
    families = {family["model_type"]: family for family in payload["families"]}
    assert set(families) == {"llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl",
                             "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "llava_next_video",
                             "internvl", "glm4v", "glm46v"}
    assert set(ADAPTERS) == set(families)  # every family listed runs, every one that runs is listed
    assert all(family["recommended"] and family["options"] for family in families.values())
    assert "3,136-602,112 pixels" in families["qwen2_vl"]["options"]
    assert "no --min-pixels" in families["internvl"]["options"]
    assert "one generate call per question length" in families["qwen3_5"]["options"]
    assert payload["random_presets"]["random:qwen3.5-9b"] == "Qwen/Qwen3.5-9B"
    assert payload["default"] == "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
    assert payload["random_presets"]["random:qwen2-vl-7b"] == "Qwen/Qwen2-VL-7B-Instruct"
    assert "Qwen2.5-VL" in invoke("models").stdout


def test_info_reports_what_the_decoder_sees():
    payload = json.loads(invoke("info", CLIP, "--json").stdout)
    assert (payload["width"], payload["height"], payload["frame_count"]) == (320, 180, 48)
    assert payload["fps"] == pytest.approx(12.0)
    assert "duration_s" in invoke("info", CLIP).stdout


def test_info_on_a_text_file_exits_2(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video")
    result = invoke("info", fake)
    assert result.exit_code == 2 and str(fake) in result.stderr


def test_subprocess_json_and_exit_codes(tiny_checkpoints, tmp_path):
    script = Path(sys.executable).with_name("vidcom2")
    base = [str(script), "ask", str(CLIP), "What colour is the ball?", "--model",
            str(tiny_checkpoints("qwen3_vl")), "--frames", "4", "--max-new-tokens", "3",
            "--device", "cpu"]
    done = subprocess.run([*base, "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["tokens"]["visual_kept"] < payload["tokens"]["visual_full"]
    missing = subprocess.run([str(script), "ask", str(tmp_path / "gone.mp4"), "What?"],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2
    assert missing.stdout == ""
    assert "gone.mp4" in missing.stderr and "Traceback" not in missing.stderr


# --- odd videos (issue 6) ----------------------------------------------------------------------


def _clip(path: Path, count: int, value: int | None = None) -> Path:
    """A 64x64 clip of `count` flat frames: all `value`, or grey levels 8 apart without one."""
    import av
    import numpy as np

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(count):
            level = 4 + 8 * i if value is None else value
            image = np.full((64, 64, 3), level, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def _strict_json(text: str):
    """json.loads that refuses NaN and +-Infinity (which Python's json would accept)."""
    def refuse(constant):
        raise AssertionError(f"non-finite number {constant} in the JSON output")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl"])
@pytest.mark.parametrize("value", [0, 255], ids=["black", "white"])
def test_ask_on_a_constant_video_gives_finite_json(tiny_checkpoints, tmp_path, family, value):
    # Identical frames: every frame-to-video similarity ties, every token is alike.
    video = _clip(tmp_path / "flat.mp4", 8, value)
    result = ask(tiny_checkpoints(family), "--json", video=video)
    assert result.exit_code == 0, result.stderr
    payload = _strict_json(result.stdout)
    tokens = payload["tokens"]
    units = payload["frames"]["count"] // payload["frames"]["per_unit"]
    per_unit = (tokens["visual_full"] - tokens["visual_structural"]) // units
    assert len(tokens["per_frame_kept"]) == units
    assert all(1 <= kept <= per_unit for kept in tokens["per_frame_kept"])
    assert sum(tokens["per_frame_kept"]) == tokens["visual_kept"] - tokens["visual_structural"]
    assert 0 < payload["kept_ratio"] <= 1


@pytest.mark.parametrize(("family", "indices"), [("llava_onevision", [0]), ("qwen2_vl", [0, 0])])
def test_ask_on_a_one_frame_video_uses_one_frame(tiny_checkpoints, tmp_path, family, indices):
    video = _clip(tmp_path / "one.mp4", 1)
    result = ask(tiny_checkpoints(family), "--json", video=video)
    assert result.exit_code == 0, result.stderr
    frames = _strict_json(result.stdout)["frames"]
    assert frames["indices"] == indices and frames["count"] == len(indices)
    assert frames["padded"] == len(indices) - 1 and frames["source_frames"] == 1
    human = ask(tiny_checkpoints(family), video=video)
    assert human.exit_code == 0, human.stderr
    said = "1 frame of 1" if len(indices) == 1 else "2 frames (1 padded) of 1"
    assert said in human.stdout


def test_odd_inputs_exit_2_with_one_line(tiny_checkpoints, tmp_path):
    import av
    import numpy as np

    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 48)).save(photo)
    locked = tmp_path / "locked.mp4"
    with av.open(str(locked), "w", options={
            "encryption_scheme": "cenc-aes-ctr",
            "encryption_key": "00112233445566778899aabbccddeeff",
            "encryption_kid": "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"}) as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(4):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    for path, needle in ((photo, "is a PNG image"), (locked, "is encrypted")):
        for result in (invoke("info", path), ask(tiny_checkpoints("llava_onevision"), video=path)):
            assert result.exit_code == 2
            assert result.stdout == ""
            assert needle in result.stderr and str(path) in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl"])
def test_prompt_longer_than_the_context_exits_2_naming_the_limit(tiny_checkpoints, family):
    # The tiny models' context is 4096 positions; this question alone is longer.
    long_question = "describe the video " * 1500
    result = ask(tiny_checkpoints(family), "--json", question=long_question)
    assert result.exit_code == 2, result.stderr
    assert result.stdout == ""
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "context is 4096 tokens" in message


def test_answer_that_would_overflow_the_context_is_refused(tiny_checkpoints):
    result = ask(tiny_checkpoints("llava_onevision"), "--max-new-tokens", "5000")
    assert result.exit_code == 2
    assert "--max-new-tokens" in result.stderr


@pytest.fixture
def offline_hub(monkeypatch):
    """No network: the hub client answers from its (empty) cache only."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-vidcom2-hf-home")


def test_unknown_model_id_exits_2_on_one_line(offline_hub):
    result = invoke("ask", CLIP, "What happens?", "--model", "nobody/no-such-video-llm")
    assert result.exit_code == 2
    assert result.stdout == ""
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "nobody/no-such-video-llm" in message


def test_unsupported_architecture_exits_2_naming_the_families(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    result = invoke("ask", CLIP, "What happens?", "--model", tmp_path)
    assert result.exit_code == 2
    assert result.stdout == ""
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "'bert'" in message and "Qwen2.5-VL" in message
