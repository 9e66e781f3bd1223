"""Model adapters on tiny offline checkpoints of every family, loaded by path."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from vidcom2_cli.compression import METHODS, get_method, select
from vidcom2_cli.engine import Engine
from vidcom2_cli.models import LoadOptions, ModelLoadError, load_adapter, load_model, loading
from vidcom2_cli.models.loading import resolve_attention, resolve_dtype
from vidcom2_cli.options import CompressionOptions, GenerationOptions, SamplingOptions
from vidcom2_cli.work import Request

FAMILIES = ["llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5",
            "qwen3_5_moe", "llava_next_video", "internvl", "glm4v", "glm46v"]
# families whose positions come from the model's own (M-RoPE / 3-D) get_rope_index
QWEN = [family for family in FAMILIES if family.startswith(("qwen", "glm"))]
pytestmark = pytest.mark.slow


SCENE_CUT = Path(__file__).resolve().parents[1] / "sample_videos" / "scene_cut.mp4"


def clip(seed: int, frames: int = 8) -> tuple[np.ndarray, dict]:
    """Frames with structure (a moving bright square on a noisy background) and metadata."""
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 80, (frames, 64, 64, 3), dtype=np.uint8)
    for index in range(frames):
        top = 4 + 6 * index % 40
        video[index, top:top + 16, top:top + 16] = (255, 40 * seed % 255, 0)
    total = frames * 6
    metadata = {"fps": 12.0, "total_num_frames": total, "duration": total / 12.0,
                "frames_indices": list(range(0, total, 6))}
    return video, metadata


@pytest.fixture(scope="module", params=FAMILIES)
def family_adapter(request, tiny_checkpoints):
    # fp32, not "auto": these tests compare logits to 1e-4 and batched with single answers,
    # which bf16 (auto's choice on a CPU with AVX512-BF16 or AMX) rounds apart
    loaded, adapter = load_adapter(str(tiny_checkpoints(request.param)),
                                   LoadOptions(device="cpu", dtype="float32", attention="sdpa"))
    return request.param, loaded, adapter


def prepared(adapter, seed=0, frames=8, question="What happens in this video?"):
    video, metadata = clip(seed, frames)
    item = adapter.prepare(video, metadata, question)
    return item, adapter.encode(item)


def test_ratio_one_gives_bit_identical_logits_and_tokens(family_adapter):
    _, loaded, adapter = family_adapter
    item, encoded = prepared(adapter)
    plan = select(encoded.features, 1.0, grid=encoded.grid)
    compressed = adapter.compress(item, encoded, plan)
    assert torch.equal(compressed.input_ids, item.inputs["input_ids"][0])
    with torch.inference_mode():
        reference = loaded.model(**item.inputs, use_cache=False).logits
        reference_tokens = loaded.model.generate(**item.inputs, max_new_tokens=6,
                                                 do_sample=False)
    assert torch.equal(adapter.forward_logits([compressed]), reference)
    ours = adapter.generate([compressed], max_new_tokens=6)
    expected = adapter.trim([reference_tokens[0, item.length:].tolist()])[0]
    assert ours.token_ids[0] == expected


@pytest.mark.parametrize("ratio", [0.25, 0.1])
def test_compression_drops_only_video_tokens(family_adapter, ratio):
    _, _, adapter = family_adapter
    item, encoded = prepared(adapter)
    plan = select(encoded.features, ratio, grid=encoded.grid)
    compressed = adapter.compress(item, encoded, plan)
    dropped = plan.total_full - plan.total_kept
    assert dropped > 0
    assert compressed.length == item.length - dropped
    full_ids = item.inputs["input_ids"][0]
    video_id = adapter.video_token_id
    # every non-video token (text, newline, vision start/end, timestamps) survives, in order
    assert torch.equal(compressed.input_ids[compressed.input_ids != video_id],
                       full_ids[full_ids != video_id])
    assert int((compressed.input_ids == video_id).sum()) == int(
        (full_ids == video_id).sum()) - dropped
    result = adapter.generate([compressed], max_new_tokens=4)
    assert result.timing.decode_steps >= 0 and len(result.texts) == 1


@pytest.mark.parametrize("family", ["llava_onevision", "llava_next_video", "internvl"])
def test_one_d_families_get_dense_positions(tiny_checkpoints, family):
    _, adapter = load_adapter(str(tiny_checkpoints(family)), LoadOptions(device="cpu"))
    item, encoded = prepared(adapter)
    compressed = adapter.compress(item, encoded, select(encoded.features, 0.25))
    assert torch.equal(compressed.position_ids[0], torch.arange(compressed.length))


@pytest.mark.parametrize("family", QWEN)
def test_qwen_kept_tokens_keep_their_rope_positions(tiny_checkpoints, family):
    loaded, adapter = load_adapter(str(tiny_checkpoints(family)), LoadOptions(device="cpu"))
    item, encoded = prepared(adapter)
    plan = select(encoded.features, 0.25, grid=encoded.grid)
    compressed = adapter.compress(item, encoded, plan)
    arguments = {k: v for k, v in item.inputs.items()
                 if k in ("input_ids", "mm_token_type_ids", "video_grid_thw",
                          "second_per_grid_ts", "attention_mask")}
    model_positions, delta = loaded.model.model.get_rope_index(**arguments)
    full = item.positions  # (3, L), computed on the CPU by preprocess
    assert torch.equal(full, model_positions[:, 0])
    video = item.video_token_mask
    kept_video = compressed.input_ids == adapter.video_token_id
    assert torch.equal(compressed.position_ids[:, kept_video],
                       full[:, video][:, plan.flat_mask()])
    # text after the video keeps its original positions
    assert torch.equal(compressed.position_ids[:, ~kept_video], full[:, ~video])
    # the first decoded token sits where the uncompressed run would put it: L + rope delta
    batch = adapter.collate([compressed])
    assert batch["position_ids"].shape == (4, 1, compressed.length)
    assert int(batch["position_ids"][1:, 0, -1].max()) + 1 == item.length + int(delta)


def test_a_batch_gives_each_item_its_single_answer(family_adapter):
    _, _, adapter = family_adapter
    questions = ["What happens?", "Describe the colour of the moving square in detail.",
                 "How many objects are there in the scene overall?"]
    frame_counts = [8, 6, 8]
    compressed = []
    for seed, (question, frames) in enumerate(zip(questions, frame_counts, strict=True)):
        item, encoded = prepared(adapter, seed=seed + 1, frames=frames, question=question)
        plan = select(encoded.features, 0.25, grid=encoded.grid)
        compressed.append(adapter.compress(item, encoded, plan))
    assert len({item.length for item in compressed}) > 1  # padding is really exercised
    batched = adapter.generate(compressed, max_new_tokens=6)
    # the next-token logits too, as tiny random models can answer alike whatever they see
    last = adapter.forward_logits(compressed)[:, -1]
    for index, item in enumerate(compressed):
        single = adapter.generate([item], max_new_tokens=6)
        assert batched.token_ids[index] == single.token_ids[0]
        torch.testing.assert_close(last[index], adapter.forward_logits([item])[0, -1],
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_on_every_family(family_adapter, method):
    """With the vision signals the method reads, from the tower, and the family's profile."""
    _, _, adapter = family_adapter
    video, metadata = clip(0, 8)
    item = adapter.prepare(video, metadata, "What happens in this video?")
    encoded = adapter.encode(item, frozenset(get_method(method).signals))
    plan = select(encoded.features, 0.3, method, grid=encoded.grid, signals=encoded.signals,
                  profile=adapter.compression_profile)
    compressed = adapter.compress(item, encoded, plan)
    assert compressed.length == item.length - (plan.total_full - plan.total_kept)
    assert len(adapter.generate([compressed], max_new_tokens=2).texts) == 1


def test_features_layout_matches_the_real_grid(family_adapter):
    family, loaded, adapter = family_adapter
    item, encoded = prepared(adapter)
    units, tokens, channels = encoded.features.shape
    assert tokens == encoded.grid[0] * encoded.grid[1]
    assert channels == loaded.model.config.text_config.hidden_size
    assert units == 8 // adapter.frames_multiple  # a frame, or a temporal unit of 2
    structural = 1 if family == "llava_onevision" else 0
    assert int(item.video_token_mask.sum()) == units * tokens + structural


def test_an_encoded_request_holds_no_pixels_and_still_answers(family_adapter):
    """After the vision encoder the pixels are dropped (in a batch, encoded items wait for
    their generate call), and what is left is enough to compress and generate."""
    _, loaded, adapter = family_adapter
    engine = Engine(loaded, adapter)
    prepared = engine.prepare(Request(str(SCENE_CUT), "What happens?"), SamplingOptions(frames=4))
    encoded = engine.encode_prepared(prepared)
    assert not any(key.startswith("pixel_values") for key in encoded.item.inputs)
    assert prepared.item.has_pixels  # the CPU copy is left as it was
    answer = engine.answer([encoded], CompressionOptions(ratio=0.5),
                           GenerationOptions(max_new_tokens=2, min_new_tokens=2))[0]
    assert answer.tokens.generated == 2
    assert answer.tokens.prompt_kept < answer.tokens.prompt_full


def test_loading_rejects_unsupported_and_missing(tmp_path, tiny_checkpoints):
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelLoadError, match="supported: LLaVA-OneVision"):
        load_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="--attn"):
        load_model(str(tiny_checkpoints("qwen2_vl")), LoadOptions(attention="flash"))
    with pytest.raises(ModelLoadError, match="--dtype"):
        load_model(str(tiny_checkpoints("qwen2_vl")), LoadOptions(dtype="int3"))


def test_loading_defaults_on_cpu(tiny_checkpoints):
    loaded = load_model(str(tiny_checkpoints("qwen2_vl")))
    if not torch.cuda.is_available():
        assert loaded.device.type == "cpu"
        # bf16 where this machine's CPU computes it natively, fp32 elsewhere
        assert loaded.dtype == resolve_dtype("auto", torch.device("cpu"))
        assert loaded.attention == "sdpa"
    assert loaded.model.dtype == loaded.dtype


@pytest.fixture
def fake_gpu(monkeypatch):
    """What the dtype and attention choices read from a GPU, set per test."""
    gpu = {"capability": (9, 0), "flash": True}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: gpu["capability"])
    monkeypatch.setattr(loading, "flash_attention_2_installed", lambda: gpu["flash"])
    return gpu


CUDA = torch.device("cuda")


def test_auto_dtype_is_bf16_only_where_the_gpu_computes_in_it(fake_gpu):
    assert resolve_dtype("auto", CUDA) == torch.bfloat16
    fake_gpu["capability"] = (7, 5)  # a T4
    assert resolve_dtype("auto", CUDA) == torch.float16
    assert resolve_dtype("bf16", CUDA) == torch.bfloat16  # asked for: the user's choice


CPU = torch.device("cpu")
AVX2_ONLY = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma"  # e.g. Skylake, Zen 3


@pytest.mark.parametrize(("flags", "expected"), [
    (AVX2_ONLY, torch.float32),
    (AVX2_ONLY + " avx512f avx512bw avx512vl", torch.float32),  # AVX-512 without BF16: emulated
    (AVX2_ONLY + " avx512f avx512_bf16", torch.bfloat16),  # Cooper Lake, Zen 4
    (AVX2_ONLY + " amx_bf16 amx_tile amx_int8", torch.bfloat16),  # Sapphire Rapids
    ("", torch.float32),  # no /proc/cpuinfo (macOS, Windows)
])
def test_auto_dtype_on_a_cpu_is_bf16_only_where_it_computes_bf16_natively(flags, expected):
    assert resolve_dtype("auto", CPU, flags=flags.split()) == expected
    assert resolve_dtype("fp32", CPU, flags=flags.split()) == torch.float32  # asked for: kept
    assert resolve_dtype("bf16", CPU, flags=flags.split()) == torch.bfloat16


def test_cpu_flags_are_read_from_cpuinfo_text():
    text = ("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512_bf16\n"
            "bugs\t\t: spectre_v1\n\nprocessor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert loading.parse_cpu_flags(text) == {"fpu", "avx2", "avx512_bf16"}
    assert loading.parse_cpu_flags("Features\t: fp asimd bf16\n") == frozenset()  # ARM
    assert not loading.cpu_computes_bf16(loading.parse_cpu_flags("no flags line"))


def test_auto_dtype_reads_this_machines_cpu_flags(monkeypatch):
    monkeypatch.setattr(loading, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert resolve_dtype("auto", CPU) == torch.bfloat16
    monkeypatch.setattr(loading, "cpu_flags", lambda: frozenset({"avx2"}))
    assert resolve_dtype("auto", CPU) == torch.float32


@pytest.mark.parametrize(("gpu", "dtype", "problem"), [
    ({}, torch.bfloat16, None),
    ({}, torch.float16, None),
    ({}, torch.float32, "runs in bf16 or fp16 only, not float32"),
    ({"capability": (7, 5)}, torch.float16, "this GPU has 7.5"),
    ({"flash": False}, torch.bfloat16, "pip install 'vidcom2-cli[flash]'"),
])
def test_flash_attention_only_where_it_can_run(fake_gpu, gpu, dtype, problem):
    fake_gpu.update(gpu)
    if problem is None:
        assert resolve_attention("auto", CUDA, dtype) == "flash_attention_2"
        assert resolve_attention("flash_attention_2", CUDA, dtype) == "flash_attention_2"
    else:
        assert resolve_attention("auto", CUDA, dtype) == "sdpa"
        with pytest.raises(ModelLoadError, match=re.escape(problem)):
            resolve_attention("flash_attention_2", CUDA, dtype)
    assert resolve_attention("eager", CUDA, dtype) == "eager"


def test_flash_attention_needs_a_gpu(fake_gpu):
    cpu = torch.device("cpu")
    assert resolve_attention("auto", cpu, torch.bfloat16) == "sdpa"
    with pytest.raises(ModelLoadError, match="needs a CUDA GPU"):
        resolve_attention("flash_attention_2", cpu, torch.bfloat16)


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_vl"])
def test_qwen3_5_is_asked_without_thinking(tiny_checkpoints, family):
    """Qwen3.5's template opens a thinking block unless told not to; the adapter tells it (the
    block comes closed), and the other families' prompts are as their templates make them."""
    _, adapter = load_adapter(str(tiny_checkpoints(family)), LoadOptions(device="cpu"))
    prompt = adapter.prompt("What happens?")
    if family == "qwen3_5":
        assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    else:
        assert prompt.endswith("<|im_start|>assistant\n") and "<think>" not in prompt


def test_qwen2_5_temporal_positions_survive_bf16(tiny_checkpoints):
    """Only pixels take the model's dtype: bf16 would round the seconds per temporal patch,
    and with them Qwen2.5-VL's temporal positions once they pass 256."""
    frames, _ = clip(0)
    slow = {"fps": 0.0199, "total_num_frames": 8, "duration": 8 / 0.0199,
            "frames_indices": list(range(8))}  # ~100 s per 2-frame patch
    positions = {}
    for dtype in ("float32", "bfloat16"):
        _, adapter = load_adapter(str(tiny_checkpoints("qwen2_5_vl")),
                                  LoadOptions(device="cpu", dtype=dtype))
        item = adapter.prepare(frames, slow, "When does it change?")
        assert item.inputs["pixel_values_videos"].dtype == getattr(torch, dtype)
        assert item.inputs["second_per_grid_ts"].dtype == torch.float32
        positions[dtype] = item.positions
    assert int(positions["float32"][0].max()) > 256  # where bf16 can no longer count by ones
    assert torch.equal(positions["bfloat16"], positions["float32"])
