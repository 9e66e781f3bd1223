"""The field's compressors through the engine, on every family: R = 1.0 is the stock model,
a batch equals single runs, hooks leave nothing behind, a feature cache keeps the signals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_adapters import FAMILIES

from vidcom2_cli.compression import METHODS
from vidcom2_cli.engine import Engine
from vidcom2_cli.feature_cache import FeatureCache
from vidcom2_cli.models import LoadOptions
from vidcom2_cli.options import CompressionOptions, GenerationOptions, SamplingOptions
from vidcom2_cli.work import Request

pytestmark = pytest.mark.slow
SAMPLES = Path(__file__).resolve().parents[1] / "sample_videos"
VIDEOS = [str(SAMPLES / name) for name in ("scene_cut.mp4", "color_change.mp4",
                                           "counting.mp4")]
# the field's methods: every registered one but VidCom2's own and the baselines
FIELD = [name for name, method in METHODS.items()
         if "+" not in name and method.spec.name not in ("vidcom2", "random", "uniform")]
FIELD_ALL = FIELD + [f"{name}+fca" for name in FIELD if f"{name}+fca" in METHODS]
SAMPLING = SamplingOptions(frames=8)
GENERATION = GenerationOptions(max_new_tokens=4)


@pytest.fixture(scope="module", params=FAMILIES)
def family_engine(request, tiny_checkpoints) -> tuple[str, Engine]:
    engine = Engine.load(str(tiny_checkpoints(request.param)),
                         LoadOptions(device="cpu", attention="sdpa"))
    engine.expect_methods(FIELD_ALL)
    return request.param, engine


def test_ratio_one_is_the_stock_model_for_every_method(family_engine):
    _, engine = family_engine
    encoded = engine.encode(Request(VIDEOS[0], "What happens?"), SAMPLING)
    stock = engine.adapter.forward_logits([engine._compress(
        encoded, CompressionOptions(1.0, "vidcom2"))[1]])
    for method in FIELD_ALL:
        plan, compressed, _ = engine._compress(encoded, CompressionOptions(1.0, method))
        assert plan.total_kept == plan.total_full and plan.merges is None
        assert torch.equal(engine.adapter.forward_logits([compressed]), stock), method


def test_every_method_answers_and_sends_about_r_of_the_tokens(family_engine):
    family, engine = family_engine
    encoded = engine.encode(Request(VIDEOS[0], "What happens?"), SAMPLING)
    for method in FIELD_ALL:
        answer = engine.answer([encoded], CompressionOptions(0.5, method), GENERATION)[0]
        assert answer.method == method and answer.tokens.generated >= 1
        assert answer.tokens.visual_kept < answer.tokens.visual_full, (family, method)


def test_a_batch_of_three_videos_equals_the_single_runs(family_engine):
    _, engine = family_engine
    encoded = [engine.encode(Request(video, "What happens?"), SAMPLING) for video in VIDEOS]
    for method in ("fastvid", "holitom", "visionzip+fca", "dycoke", "flashvid", "flashvid+fca"):
        options = CompressionOptions(0.25, method)
        together = engine.answer(encoded, options, GENERATION)
        alone = [engine.answer([one], options, GENERATION)[0] for one in encoded]
        assert [a.answer for a in together] == [a.answer for a in alone], method
        assert [a.plan.counts for a in together] == [a.plan.counts for a in alone]


def test_a_vidcom2_run_after_the_hooked_methods_is_unchanged(family_engine):
    _, engine = family_engine
    fresh = Engine(engine.loaded, engine.adapter)  # expects no signals: the encoder unhooked
    request = Request(VIDEOS[1], "What happens?")
    before = fresh.ask(request, SAMPLING, CompressionOptions(0.25, "vidcom2"), GENERATION)
    for method in FIELD:
        engine.ask(request, SAMPLING, CompressionOptions(0.25, method), GENERATION)
    assert not any(module._forward_pre_hooks for module in engine.loaded.model.modules())
    after = fresh.ask(request, SAMPLING, CompressionOptions(0.25, "vidcom2"), GENERATION)
    assert after.answer == before.answer
    assert torch.equal(after.plan.mask, before.plan.mask)


def test_the_feature_cache_keeps_the_signals_under_their_own_key(tiny_checkpoints, tmp_path):
    engine = Engine.load(str(tiny_checkpoints("qwen2_5_vl")),
                         LoadOptions(device="cpu", attention="sdpa"),
                         feature_cache=FeatureCache(tmp_path))
    request = Request(VIDEOS[0], "What happens?")
    options = CompressionOptions(0.25, "visionzip")
    first = engine.ask(request, SAMPLING, options, GENERATION)
    second = engine.ask(request, SAMPLING, options, GENERATION)
    assert (first.feature_cache, second.feature_cache) == ("miss", "hit")
    assert torch.equal(first.plan.mask, second.plan.mask)
    assert torch.equal(first.plan.merges.weights, second.plan.merges.weights)
    assert second.answer == first.answer
    plain = Engine(engine.loaded, engine.adapter, FeatureCache(tmp_path))
    assert plain.ask(request, SAMPLING, CompressionOptions(0.25, "vidcom2"),
                     GENERATION).feature_cache == "miss"  # no signals: another entry
