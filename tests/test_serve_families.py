"""``vidcom2 serve`` on every other model family (one server at a time, with a feature cache):
the official openai client, streaming and plain HTTP give what ``vidcom2 ask`` gives."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from jsonl_files import records
from serve_helpers import http, metric, running, video_message
from tiny_models import TINY_VISION_SIZES
from typer.testing import CliRunner

from vidcom2_cli.cli import app
from vidcom2_cli.engine import Engine
from vidcom2_cli.feature_cache import FeatureCache
from vidcom2_cli.models import LoadOptions
from vidcom2_cli.options import CompressionOptions, GenerationOptions, SamplingOptions
from vidcom2_cli.serve.app import ServerSettings, build_app
from vidcom2_cli.serve.media import MediaRules
from vidcom2_cli.serve.protocol import ServeDefaults

pytestmark = pytest.mark.slow
SAMPLES = Path(__file__).resolve().parents[1] / "sample_videos"
VIDEO = SAMPLES / "scene_cut.mp4"
QUESTION = "What happens in this clip?"
SYSTEM = "Answer every question in one short word, please, and nothing else."
# Every family but LLaVA-OneVision (tests/test_serve.py): M-RoPE positions, hybrid
# (linear-attention) language models answered per question length, frames expanded from a
# template token, GLM's and Qwen3-VL's timestamps, mixtures of experts.
FAMILIES = [family for family in TINY_VISION_SIZES if family != "llava_onevision"]
runner = CliRunner()


@pytest.fixture(scope="module", params=FAMILIES)
def served(request, tiny_checkpoints, tmp_path_factory):
    checkpoint = tiny_checkpoints(request.param)
    cache = FeatureCache(tmp_path_factory.mktemp("features"))
    engine = Engine.load(str(checkpoint), LoadOptions(device="cpu", attention="sdpa"), cache)
    settings = ServerSettings(
        served_model=request.param,
        defaults=ServeDefaults(SamplingOptions(frames=4), CompressionOptions(ratio=0.5),
                               GenerationOptions(max_new_tokens=5)),
        media=MediaRules(SAMPLES.resolve()))
    with running(build_app(engine, settings)) as url:
        yield url, request.param, checkpoint


def test_every_way_of_asking_gives_the_local_answer(served):
    url, name, checkpoint = served
    result = runner.invoke(app, ["ask", str(VIDEO), QUESTION, "--model", str(checkpoint),
                                 "--device", "cpu", "--frames", "4", "--ratio", "0.5",
                                 "--max-new-tokens", "5", "--json"])
    assert result.exit_code == 0, result.stderr
    local = records(result.stdout)[0]
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                           timeout=600)
    messages = video_message(VIDEO.name, QUESTION)
    sync = client.chat.completions.create(model=name, messages=messages)
    chunks = list(client.chat.completions.create(
        model=name, messages=messages, stream=True, stream_options={"include_usage": True}))
    status, _, plain = http("POST", url + "/v1/chat/completions",
                            {"model": name, "messages": messages})
    assert status == 200, plain
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks
                       if chunk.choices)
    assert sync.choices[0].message.content == streamed == (
        plain["choices"][0]["message"]["content"]) == local["answer"]
    for usage in (sync.usage, chunks[-1].usage):
        assert usage.prompt_tokens == local["tokens"]["prompt_kept"]
        assert usage.completion_tokens == local["tokens"]["generated"]
    assert plain["vidcom2"]["tokens"]["per_frame_kept"] == local["tokens"]["per_frame_kept"]
    assert plain["vidcom2"]["frames"] == local["frames"]


def test_the_feature_cache_skips_the_encoder_for_new_settings(served):
    url, name, _ = served
    messages = video_message("counting.mp4", QUESTION)
    encoded = metric(url, "vidcom2_vision_encoder_runs_total")
    first = http("POST", url + "/v1/chat/completions", {"model": name, "messages": messages})
    other_ratio = http("POST", url + "/v1/chat/completions",
                       {"model": name, "messages": messages, "vidcom2": {"ratio": 0.25}})
    assert first[0] == other_ratio[0] == 200
    assert first[2]["vidcom2"]["feature_cache"] == "miss"
    assert other_ratio[2]["vidcom2"]["feature_cache"] == "hit"
    assert other_ratio[2]["vidcom2"]["server"]["prefix_cache"] == "miss"  # another prefix
    assert metric(url, "vidcom2_vision_encoder_runs_total") - encoded == 1
    assert metric(url, "vidcom2_feature_cache_total", result="hit") >= 1


def test_a_system_message_is_part_of_the_prefix(served):
    url, name, _ = served
    asked = [video_message("color_change.mp4", QUESTION),
             [{"role": "system", "content": SYSTEM},
              *video_message("color_change.mp4", QUESTION)]]
    replies = [http("POST", url + "/v1/chat/completions", {"model": name, "messages": m})[2]
               for m in (*asked, asked[1])]
    plain, system, again = (reply["vidcom2"] for reply in replies)
    assert system["server"]["prefix_cache"] == "miss"  # not the plain prompt's prefix
    assert system["tokens"]["prompt_kept"] != plain["tokens"]["prompt_kept"]
    assert again["server"]["prefix_cache"] == "hit" and again["answer"] == system["answer"]
