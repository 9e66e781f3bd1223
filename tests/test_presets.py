"""Random-weight presets: real-size architectures built from the shipped configs, offline."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from vidcom2_cli.cli import app
from vidcom2_cli.models import LoadOptions, ModelLoadError
from vidcom2_cli.models.offline import EOS_TOKEN, PAD_TOKEN
from vidcom2_cli.models.presets import (
    build_random_model,
    checkpoint_model_type,
    preset_config,
    preset_names,
    preset_parameters,
)
from vidcom2_cli.models.registry import load_adapter

# Parameter counts published on the checkpoints' model cards (billions).
PUBLISHED_PARAMETERS = {
    "llava-onevision-0.5b": 0.894,
    "llava-onevision-7b": 8.03,
    "qwen2-vl-2b": 2.21,
    "qwen2-vl-7b": 8.29,
    "qwen2.5-vl-7b": 8.29,
    "qwen3-vl-8b": 8.77,
    "qwen3-vl-30b-a3b": 31.07,  # Qwen/Qwen3-VL-30B-A3B-Instruct, 31.07 B on its hub page
    "qwen3.5-35b-a3b": 35.0,  # "35B total / 3B active" (model card and transformers' docs)
    "qwen3.5-9b": 8.95,  # the language model alone, see LANGUAGE_MODEL_ONLY
}
# Presets whose published count is of the language model alone (vision tower not counted): the
# Qwen3.5-9B card gives "Language Model, Number of Parameters: 9B"; 8.95 B is that language
# model's count as reported from its GGUF metadata (the MTP head, which transformers does not
# build, left out). The whole preset, vision tower included, is 9.41 B.
LANGUAGE_MODEL_ONLY = {"qwen3.5-9b"}
CLIP = "sample_videos/scene_cut.mp4"


def test_every_required_preset_ships():
    assert set(PUBLISHED_PARAMETERS) <= set(preset_names())


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_preset_is_built_on_the_target_device_in_the_target_dtype(name):
    # The meta device allocates nothing, so even the 8B presets build here in a moment. (This
    # checks where parameters end up, not that they were never elsewhere on the way.)
    loaded = build_random_model(f"random:{name}", LoadOptions(device="meta", dtype="bfloat16"))
    parameters = list(loaded.model.parameters())
    assert {p.device.type for p in parameters} == {"meta"}
    assert {p.dtype for p in parameters} == {torch.bfloat16}
    # the count the memory check reads, without building the model
    assert sum(p.numel() for p in parameters) == preset_parameters(name)
    if name in LANGUAGE_MODEL_ONLY:
        vision = {id(p) for p in loaded.model.model.visual.parameters()}
        parameters = [p for p in parameters if id(p) not in vision]
    count = sum(p.numel() for p in parameters) / 1e9
    assert count == pytest.approx(PUBLISHED_PARAMETERS[name], rel=0.005)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_tokenizer_fills_the_vocabulary_and_the_config_points_at_its_special_tokens(name):
    loaded = build_random_model(f"random:{name}", LoadOptions(device="meta"))
    tokenizer, config = loaded.processor.tokenizer, loaded.model.config
    assert len(tokenizer) == preset_config(name).text_config.vocab_size
    assert tokenizer.model_max_length == config.text_config.max_position_embeddings
    assert config.text_config.vocab_size == len(tokenizer)
    video_id = getattr(config, "video_token_id", None) or config.video_token_index
    assert tokenizer.convert_ids_to_tokens(video_id) in ("<video>", "<|video_pad|>")
    assert loaded.model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids(
        EOS_TOKEN)
    assert tokenizer.pad_token == PAD_TOKEN
    # Any id a random model emits decodes to text, the last one included.
    assert tokenizer.decode([len(tokenizer) - 1]) != ""


def test_processor_patching_matches_the_vision_config():
    loaded = build_random_model("random:qwen3-vl-8b", LoadOptions(device="meta"))
    video_processor = loaded.processor.video_processor
    assert video_processor.patch_size == loaded.model.config.vision_config.patch_size == 16


def test_unknown_preset_names_the_presets():
    with pytest.raises(ModelLoadError, match="llava-onevision-7b"):
        load_adapter("random:gpt-5", LoadOptions(device="cpu"))


def test_unknown_preset_exits_2_on_one_line():
    result = CliRunner().invoke(app, ["ask", CLIP, "hi", "--model", "random:nope"])
    assert result.exit_code == 2
    assert "random:nope" not in result.stdout
    assert len(result.stderr.strip().splitlines()) == 1 and "preset" in result.stderr


def test_smallest_preset_answers_end_to_end_and_says_its_weights_are_random():
    """The same path a user's `--model random:llava-onevision-0.5b` takes, on the CPU."""
    runner = CliRunner()
    args = ["ask", CLIP, "What happens?", "--model", "random:llava-onevision-0.5b",
            "--frames", "1", "--max-new-tokens", "2", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["random_weights"] is True
    assert "random weights" in result.stderr  # said even where stdout is only JSON
    # SigLIP at 384 px with 14 px patches: 27 x 27, pooled to 14 x 14, plus the newline token.
    assert answer["tokens"]["visual_full"] == 14 * 14 + 1
    assert answer["frames"]["count"] == 1
    assert 1 <= answer["tokens"]["generated"] <= 2


def test_model_type_is_read_without_loading_weights(tiny_checkpoints):
    """`eval --ray` picks the prompt variant from this before any worker loads the model."""
    for name in preset_names():
        assert checkpoint_model_type(f"random:{name}") == preset_config(name).model_type
    assert checkpoint_model_type(str(tiny_checkpoints("qwen3_vl"))) == "qwen3_vl"
    with pytest.raises(ModelLoadError, match="no random-weight preset"):
        checkpoint_model_type("random:no-such-model")


@pytest.mark.parametrize(("max_new_tokens", "suggested"), [(128, True), (8, False), (None, False)])
def test_a_random_model_on_a_cpu_suggests_short_answers(monkeypatch, max_new_tokens, suggested):
    from types import SimpleNamespace

    import torch
    from rich.console import Console

    from vidcom2_cli.cli import console, runtime
    from vidcom2_cli.engine import Engine

    loaded = SimpleNamespace(random_weights=True, device=torch.device("cpu"))
    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, *args, **kwargs: loaded))
    screen = Console(record=True, width=300)
    monkeypatch.setattr(console, "stderr", screen)
    runtime.load_engine("random:llava-onevision-0.5b", "cpu", "auto", "auto", None, quiet=True,
                        max_new_tokens=max_new_tokens)
    note = screen.export_text()
    assert "random weights" in note
    assert ("--max-new-tokens 8 is enough" in note) == suggested
