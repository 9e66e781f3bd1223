"""The memory check before loading: what the weights need, what the device has free, and the
one-line refusal that says what fits instead (free memory is injected: no test depends on this
machine's)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from vidcom2_cli.cli import app
from vidcom2_cli.models import LoadOptions, load_model
from vidcom2_cli.models import memory as memory_module
from vidcom2_cli.models.memory import (
    GIB,
    NotEnoughMemory,
    Room,
    cgroup_headroom,
    check_memory,
    checkpoint_parameters,
    folder_parameters,
    parse_meminfo_available,
    refuse_unless_fits,
    safetensors_counts,
)
from vidcom2_cli.models.presets import build_random_model, preset_names, preset_parameters

CPU = torch.device("cpu")
SEVEN_B = preset_parameters("qwen2.5-vl-7b")  # 8.29 billion
PRESETS = {f"random:{name}": preset_parameters(name) for name in preset_names()}


@pytest.fixture
def room(monkeypatch):
    """Set the free memory every device reports, in GiB."""
    def set_free(gib: float) -> None:
        monkeypatch.setattr(memory_module, "available_room",
                            lambda device: Room("the CPU", int(gib * GIB)))
    return set_free


# --- what is free ------------------------------------------------------------------------------

def test_available_memory_is_meminfo_memavailable():
    text = ("MemTotal:       24683784 kB\nMemFree:         1234567 kB\n"
            "MemAvailable:   19290848 kB\nBuffers:          123 kB\n")
    assert parse_meminfo_available(text) == 19290848 * 1024
    assert parse_meminfo_available("MemTotal: 1 kB\n") is None  # kernels before 3.14


def test_a_containers_memory_limit_caps_what_is_free(tmp_path):
    def files(limit: str, usage: str) -> tuple[tuple[str, str]]:
        (tmp_path / "max").write_text(limit + "\n")
        (tmp_path / "current").write_text(usage + "\n")
        return ((str(tmp_path / "max"), str(tmp_path / "current")),)

    assert cgroup_headroom(files(str(8 * GIB), str(3 * GIB))) == 5 * GIB
    assert cgroup_headroom(files(str(2 * GIB), str(3 * GIB))) == 0
    assert cgroup_headroom(files("max", str(GIB))) is None  # cgroup v2: no limit
    assert cgroup_headroom(files(str(1 << 62), str(GIB))) is None  # cgroup v1: no limit
    assert cgroup_headroom(((str(tmp_path / "absent"), str(tmp_path / "absent")),)) is None


# --- what the weights need ---------------------------------------------------------------------

def test_parameters_are_counted_from_safetensors_headers(tiny_checkpoints):
    folder = tiny_checkpoints("qwen2_vl")
    expected = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as weights:
            expected += sum(weights.get_tensor(name).numel() for name in weights.keys())  # noqa: SIM118
    assert expected > 0
    assert folder_parameters(folder) == expected


def test_sharded_quantized_and_incomplete_checkpoints(tmp_path):
    save_file({"a": torch.zeros(3, 4, dtype=torch.bfloat16)}, str(tmp_path / "one.safetensors"))
    save_file({"b": torch.zeros(5, dtype=torch.float32)}, str(tmp_path / "two.safetensors"))
    assert safetensors_counts(tmp_path / "one.safetensors") == {"BF16": 12}
    index = {"metadata": {}, "weight_map": {"a": "one.safetensors", "b": "two.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert folder_parameters(tmp_path) == 17
    index["weight_map"]["c"] = "three.safetensors"  # a shard not (yet) downloaded
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert folder_parameters(tmp_path) is None
    quantized = tmp_path / "quantized"
    quantized.mkdir()
    save_file({"w": torch.zeros(8, dtype=torch.int8), "s": torch.ones(2)},
              str(quantized / "model.safetensors"))
    assert folder_parameters(quantized) is None  # packed values are not parameters


def test_a_hub_model_is_counted_from_the_cache_or_else_the_hubs_headers(monkeypatch,
                                                                          tiny_checkpoints):
    import huggingface_hub
    import huggingface_hub.constants

    folder = tiny_checkpoints("qwen2_vl")
    cache = {"org/cached": str(folder / "config.json")}
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, filename: cache.get(repo))
    stored = {"org/bf16": {"BF16": 7_000_000_000, "F32": 1000},
              "org/fp8": {"F8_E4M3": 7_000_000_000, "BF16": 1000}}
    asked = []

    def headers(repo):
        asked.append(repo)
        return SimpleNamespace(parameter_count=stored[repo])

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", headers)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert checkpoint_parameters("org/cached") == folder_parameters(folder)
    assert asked == []  # the cache answered
    assert checkpoint_parameters("org/bf16") == 7_000_001_000
    assert checkpoint_parameters("org/fp8") is None  # quantized: not counted
    assert checkpoint_parameters("org/missing") is None  # the hub failed: no check
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    asked.clear()
    assert checkpoint_parameters("org/bf16") is None and asked == []  # no request offline


def test_a_file_that_is_not_safetensors_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ValueError, match="not a safetensors header"):
        safetensors_counts(path)


# --- the refusal -------------------------------------------------------------------------------

def test_weights_that_fit_pass():
    refuse_unless_fits("random:qwen2.5-vl-7b", SEVEN_B, torch.bfloat16, Room("the CPU", 16 * GIB))


def test_refusal_says_what_is_needed_what_is_free_and_what_fits():
    with pytest.raises(NotEnoughMemory) as refused:
        refuse_unless_fits("random:qwen2.5-vl-7b", SEVEN_B, torch.float32,
                           Room("the CPU", 16 * GIB), PRESETS)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("--model: random:qwen2.5-vl-7b needs 30.9 GiB for its 8.3B "
                              "parameters in float32, and the CPU has 16.0 GiB free; ")
    # bf16 halves it; the two largest presets that fit in float32 come next, largest first
    assert message.endswith("what fits: --dtype bf16 (15.4 GiB), random:qwen2-vl-2b (8.2 GiB), "
                            "random:llava-onevision-0.5b (3.3 GiB)")


def test_refusal_in_bf16_offers_smaller_presets_only():
    with pytest.raises(NotEnoughMemory) as refused:
        refuse_unless_fits("random:qwen2.5-vl-7b", SEVEN_B, torch.bfloat16,
                           Room("GPU cuda:0", 5 * GIB), PRESETS)
    assert "--dtype" not in str(refused.value)
    assert str(refused.value).endswith(
        "GPU cuda:0 has 5.0 GiB free; what fits: random:qwen2-vl-2b (4.1 GiB), "
        "random:llava-onevision-0.5b (1.7 GiB)")


def test_refusal_of_a_checkpoint_names_a_smaller_one_or_says_to_free_memory():
    with pytest.raises(NotEnoughMemory, match=r"free; try a smaller checkpoint such as "
                                              r"Qwen/Qwen2.5-VL-3B-Instruct$"):
        refuse_unless_fits("Qwen/Qwen2.5-VL-7B-Instruct", SEVEN_B, torch.bfloat16,
                           Room("GPU cuda:0", 8 * GIB), smaller="Qwen/Qwen2.5-VL-3B-Instruct")
    with pytest.raises(NotEnoughMemory, match=r"free; free some memory, or use a machine with "
                                              r"more$"):
        refuse_unless_fits("Qwen/Qwen2.5-VL-3B-Instruct", SEVEN_B, torch.bfloat16,
                           Room("GPU cuda:0", 8 * GIB), smaller="Qwen/Qwen2.5-VL-3B-Instruct")


def test_nothing_is_refused_where_a_number_is_unknown_or_the_user_says_so(monkeypatch):
    tiny = Room("the CPU", 1024)
    check_memory("m", None, CPU, torch.float32, room=tiny)  # size unknown
    check_memory("m", SEVEN_B, CPU, torch.float32, device_map="auto", room=tiny)  # may offload
    monkeypatch.setattr(memory_module, "available_room", lambda device: None)
    check_memory("m", SEVEN_B, torch.device("meta"), torch.float32)  # free memory unknown
    monkeypatch.setenv("VIDCOM2_NO_MEMORY_CHECK", "1")
    check_memory("m", SEVEN_B, CPU, torch.float32, room=tiny)
    monkeypatch.setenv("VIDCOM2_NO_MEMORY_CHECK", "0")
    with pytest.raises(NotEnoughMemory):
        check_memory("m", SEVEN_B, CPU, torch.float32, room=tiny)


# --- before loading ----------------------------------------------------------------------------

def test_a_preset_too_large_is_refused_before_it_is_built(room, monkeypatch):
    room(5)

    def never(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr("transformers.AutoModelForImageTextToText.from_config", never)
    with pytest.raises(NotEnoughMemory, match=r"random:qwen2.5-vl-7b needs 15.4 GiB .* "
                                              r"what fits: random:qwen2-vl-2b \(4.1 GiB\)"):
        build_random_model("random:qwen2.5-vl-7b", LoadOptions(device="cpu", dtype="bf16"))


def test_a_checkpoint_too_large_is_refused_before_its_weights_load(room, tiny_checkpoints):
    folder = str(tiny_checkpoints("qwen2_vl"))
    room(1e-6)  # about a kilobyte
    with pytest.raises(NotEnoughMemory, match=r"try a smaller checkpoint such as "
                                              r"Qwen/Qwen2-VL-2B-Instruct$"):
        load_model(folder, LoadOptions(device="cpu", dtype="fp32"))
    room(1)
    assert load_model(folder, LoadOptions(device="cpu", dtype="fp32")).model is not None


def test_the_cli_prints_the_refusal_as_one_line(room):
    room(2)
    clip = str(Path(__file__).resolve().parents[1] / "sample_videos" / "color_change.mp4")
    result = CliRunner().invoke(app, ["ask", clip, "What?", "--model", "random:qwen2.5-vl-7b",
                                      "--dtype", "bf16"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("error: --model: random:qwen2.5-vl-7b needs 15.4 GiB")
    assert "what fits: random:llava-onevision-0.5b (1.7 GiB)" in lines[0]
