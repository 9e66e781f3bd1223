"""``vidcom2 serve`` end to end: one real server (a tiny LLaVA-OneVision, with an API key) on a
loopback port for the whole module, asked by the official openai client, plain HTTP, and
``ask --server`` / ``batch --server``, against what the local commands give."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import openai
import pytest
from jsonl_files import jsonl, records
from odd_videos import init_segment_only
from PIL import Image
from serve_helpers import http, metric, running, video_message
from typer.testing import CliRunner

from vidcom2_cli.cli import app
from vidcom2_cli.engine import Engine
from vidcom2_cli.models import LoadOptions
from vidcom2_cli.options import CompressionOptions, GenerationOptions, SamplingOptions
from vidcom2_cli.report import answer_to_json
from vidcom2_cli.serve.app import ServerSettings, build_app
from vidcom2_cli.serve.media import MediaRules
from vidcom2_cli.serve.protocol import ServeDefaults
from vidcom2_cli.serve.wire import answer_view, ask_json

pytestmark = pytest.mark.slow
SAMPLES = Path(__file__).resolve().parents[1] / "sample_videos"
KEY = "test-key"
NAME = "tiny-onevision"
FAST = ["--frames", "6", "--max-new-tokens", "6"]
runner = CliRunner()
# What a response holds that a local run cannot share: its own times, memory and load.
UNSHARED = ("timing_ms", "memory", "run")


@pytest.fixture(scope="module")
def served(tiny_checkpoints, tmp_path_factory):
    """(base URL, the server object, media folder, checkpoint) of the module's server."""
    checkpoint = tiny_checkpoints("llava_onevision")
    media = tmp_path_factory.mktemp("media")
    for name in ("color_change.mp4", "scene_cut.mp4", "counting.mp4"):
        shutil.copy(SAMPLES / name, media / name)
    engine = Engine.load(str(checkpoint), LoadOptions(device="cpu", attention="sdpa"))
    settings = ServerSettings(
        served_model=NAME,
        defaults=ServeDefaults(SamplingOptions(frames=6), CompressionOptions(ratio=0.25),
                               GenerationOptions(max_new_tokens=6)),
        media=MediaRules(media.resolve()), api_key=KEY, max_body_bytes=2 * 2**20,
        max_batch=4, max_queue=16, prefix_cache_bytes=256 * 2**20, request_timeout_s=300)
    application = build_app(engine, settings)
    with running(application) as url:
        yield url, application.server, media, checkpoint


@pytest.fixture
def client(served):
    url = served[0]
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=600)


def local_ask(checkpoint: Path, video: Path, *questions: str, extra: tuple[str, ...] = ()
              ) -> list[dict]:
    result = runner.invoke(app, ["ask", str(video), *questions, "--model", str(checkpoint),
                                 "--device", "cpu", *FAST, "--json", *extra])
    assert result.exit_code == 0, result.stderr
    return records(result.stdout)


def chat(url: str, video: str, question: str, key: str | None = KEY, **fields) -> tuple:
    body = {"model": NAME, "messages": video_message(video, question), **fields}
    return http("POST", url + "/v1/chat/completions", body, key=key)


def shared(payload: dict) -> dict:
    """A response's statistics as a local run has them too (prefix reuse depends on what the
    server had cached)."""
    kept = {key: value for key, value in payload.items() if key not in UNSHARED}
    kept["tokens"] = {key: value for key, value in payload["tokens"].items()
                      if key != "prefix_reused"}
    return kept


# --- answers ---------------------------------------------------------------------------------

def test_openai_client_and_plain_http_give_the_local_answer(served, client):
    url, _, media, checkpoint = served
    video = media / "scene_cut.mp4"
    local = local_ask(checkpoint, video, "What happens here?")[0]

    sync = client.chat.completions.create(
        model=NAME, messages=video_message(str(video), "What happens here?"), max_tokens=6,
        temperature=0, extra_body={"vidcom2": {"frames": 6}})
    assert sync.choices[0].message.content == local["answer"]
    assert sync.usage.prompt_tokens == local["tokens"]["prompt_kept"]
    assert sync.usage.completion_tokens == local["tokens"]["generated"]
    fields = sync.model_extra["vidcom2"]
    expected = {key: value for key, value in shared(local).items() if key != "heatmap"}
    assert shared(fields) == {**expected, "plan": fields["plan"], "sampling": fields["sampling"],
                              "server": fields["server"]}
    # the answer a client rebuilds from the field reports what the server's answer reported
    assert answer_to_json(answer_view(fields, str(video))) == ask_json(fields, str(video))
    assert sync.choices[0].finish_reason == (
        "length" if local["tokens"]["generated"] == 6 else "stop")

    stream = client.chat.completions.create(
        model=NAME, messages=video_message(video.as_uri(), "What happens here?"),
        max_tokens=6, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks
                   if chunk.choices) == local["answer"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == (
        local["tokens"]["generated"])
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-2].model_extra["vidcom2"]["tokens"]["prompt_kept"] == (
        local["tokens"]["prompt_kept"])

    status, _, plain = chat(url, "scene_cut.mp4", "What happens here?")
    assert status == 200 and plain["object"] == "chat.completion"
    assert plain["choices"][0]["message"]["content"] == local["answer"]
    assert plain["usage"]["prompt_tokens"] == local["tokens"]["prompt_kept"]


def test_the_stream_is_server_sent_events_as_openai_sends_them(served):
    url = served[0]
    body = {"model": NAME, "messages": video_message("color_change.mp4", "Colours?"),
            "stream": True}
    import urllib.request

    request = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                     {"Authorization": f"Bearer {KEY}",
                                      "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = response.read().decode()
    events = text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert all(event.startswith("data: ") for event in events[:-1])
    assert {payload["object"] for payload in payloads} == {"chat.completion.chunk"}
    assert len({payload["id"] for payload in payloads}) == 1
    assert all("usage" not in payload for payload in payloads)  # not asked for
    assert payloads[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_several_turns_and_a_system_message_are_answered(served):
    url = served[0]
    messages = [{"role": "system", "content": "You describe videos."},
                *video_message("counting.mp4", "What happens?"),
                {"role": "assistant", "content": "Shapes appear."},
                {"role": "user", "content": "How many?"}]
    status, _, turns = http("POST", url + "/v1/chat/completions",
                            {"model": NAME, "messages": messages}, key=KEY)
    assert status == 200, turns
    status, _, single = chat(url, "counting.mp4", "How many?")
    fields, alone = turns["vidcom2"], single["vidcom2"]
    assert fields["question"] == "How many?"
    assert fields["tokens"]["visual_kept"] == alone["tokens"]["visual_kept"]
    assert fields["tokens"]["prompt_kept"] > alone["tokens"]["prompt_kept"]  # the history


def test_concurrent_clients_get_their_solo_answers_in_fewer_batches(served, client):
    url, server, _, _ = served
    scheduler = server.scheduler
    questions = ["What moves?", "Which colours are there?", "Is it day?", "Count the shapes."]
    videos = ["scene_cut.mp4", "counting.mp4"]
    extra = {"vidcom2": {"ratio": 0.4}}

    def ask(video: str, question: str) -> tuple[str, int]:
        reply = client.chat.completions.create(model=NAME,
                                               messages=video_message(video, question),
                                               extra_body=extra)
        return reply.choices[0].message.content, reply.usage.completion_tokens

    asked = [(video, question) for video in videos for question in questions[:2]]
    asked += [(videos[0], question) for question in questions[2:]]
    before = metric(url, "vidcom2_engine_batches_total", KEY)
    encoded = metric(url, "vidcom2_vision_encoder_runs_total", KEY)
    scheduler.batch_wait_s, scheduler.max_batch = 5.0, len(asked)  # wait for all to arrive
    try:
        together: dict[tuple[str, str], tuple[str, int]] = {}
        threads = [threading.Thread(target=lambda pair=pair: together.update({pair: ask(*pair)}))
                   for pair in asked]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        scheduler.batch_wait_s, scheduler.max_batch = 0.005, 4
    batches = metric(url, "vidcom2_engine_batches_total", KEY) - before
    assert len(together) == len(asked)
    assert batches < len(asked)
    assert metric(url, "vidcom2_vision_encoder_runs_total", KEY) - encoded == len(videos)
    alone = {pair: ask(*pair) for pair in asked}  # one request at a time, from the cache
    assert together == alone


def test_a_repeated_question_reuses_the_prefix_and_encodes_once(served, client):
    url = served[0]
    encoded = metric(url, "vidcom2_vision_encoder_runs_total", KEY)
    replies = [client.chat.completions.create(
        model=NAME, messages=video_message("color_change.mp4", "What changes?"),
        extra_body={"vidcom2": {"ratio": 0.3, "method": "uniform"}}) for _ in range(2)]
    first, second = (reply.model_extra["vidcom2"] for reply in replies)
    assert metric(url, "vidcom2_vision_encoder_runs_total", KEY) - encoded == 1
    assert first["server"]["prefix_cache"] == "miss" and first["tokens"]["prefix_reused"] == 0
    assert second["server"]["prefix_cache"] == "hit" and second["tokens"]["prefix_reused"] > 0
    assert second["timing_ms"]["vision"] == 0 and second["timing_ms"]["video_decode"] == 0
    assert replies[1].usage.prompt_tokens_details.cached_tokens == (
        second["tokens"]["prefix_reused"])
    assert first["answer"] == second["answer"]
    assert metric(url, "vidcom2_prefix_cache_total", KEY, result="hit") >= 1


# --- refusals --------------------------------------------------------------------------------

def _bad_inputs(media: Path, outside: Path) -> list[tuple[str, dict | bytes, int, str | None]]:
    (media / "notes.mp4").write_text("this is not a video\n")
    link = media / "escape.mp4"
    if not link.exists():
        link.symlink_to(outside)
    video = "color_change.mp4"

    def body(messages=None, **fields) -> dict:
        return {"model": NAME, "messages": messages or video_message(video, "What?"), **fields}

    return [
        ("malformed JSON", b'{"model": ', 400, None),
        ("no video", body([{"role": "user", "content": "What?"}]), 400, "messages"),
        ("two videos", body([{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": video}},
            {"type": "video_url", "video_url": {"url": video}},
            {"type": "text", "text": "?"}]}]), 400, "messages[0].content[1]"),
        ("not a video", body(video_message("notes.mp4", "?")), 400,
         "messages[0].content[0].video_url.url"),
        ("no frames", body(video_message("frameless.mp4", "?")), 400,
         "messages[0].content[0].video_url.url"),
        ("ratio", body(vidcom2={"ratio": 1.5}), 400, "vidcom2.ratio"),
        ("method", body(vidcom2={"method": "squeeze"}), 400, "vidcom2.method"),
        ("method option", body(vidcom2={"method": "visionzip", "method_options": {"x": 1}}),
         400, "vidcom2.method_options"),
        ("model", body(model="gpt-4o"), 404, "model"),
        ("too many tokens", body(max_tokens=100_000), 400, "max_tokens"),
        ("an image", body([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "a.png"}},
            {"type": "text", "text": "?"}]}]), 400, "messages[0].content[0]"),
        ("..", body(video_message("../outside.mp4", "?")), 403,
         "messages[0].content[0].video_url.url"),
        ("absolute", body(video_message(str(outside), "?")), 403,
         "messages[0].content[0].video_url.url"),
        ("symlink", body(video_message("escape.mp4", "?")), 403,
         "messages[0].content[0].video_url.url"),
        ("remote", body(video_message("http://127.0.0.1:9/a.mp4", "?")), 403,
         "messages[0].content[0].video_url.url"),
        ("too large", body(video_message("data:video/mp4;base64," + "A" * 3 * 2**20, "?")),
         413, None),
    ]


def test_every_bad_input_gets_its_status_and_one_json_error(served, tmp_path):
    url, _, media, _ = served
    init_segment_only(media / "frameless.mp4")
    outside = media.parent / "outside.mp4"
    shutil.copy(SAMPLES / "counting.mp4", outside)
    for label, payload, status, param in _bad_inputs(media, outside):
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        got, _, answer = http("POST", url + "/v1/chat/completions", raw=raw, key=KEY)
        assert got == status, (label, answer)
        assert list(answer) == ["error"], label
        error = answer["error"]
        assert error["param"] == param, (label, error)
        assert "\n" not in error["message"] and "Traceback" not in error["message"], label
        assert error["message"].startswith(param or ""), (label, error)
    status, _, answer = chat(url, "color_change.mp4", "Still there?")
    assert status == 200 and answer["choices"][0]["message"]["content"] is not None


def test_unknown_routes_and_methods_are_json_errors(served):
    url = served[0]
    status, _, body = http("GET", url + "/v2/nothing", key=KEY)
    assert status == 404 and body["error"]["code"] == "not_found"
    status, _, body = http("GET", url + "/v1/chat/completions", key=KEY)
    assert status == 405 and "error" in body


def test_the_api_key_is_required_except_for_health(served):
    url = served[0]
    for key in (None, "wrong"):
        status, headers, body = chat(url, "color_change.mp4", "?", key=key)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert headers["www-authenticate"] == "Bearer"
        assert http("GET", url + "/metrics", key=key)[0] == 401
        assert http("GET", url + "/v1/models", key=key)[0] == 401
    status, _, health = http("GET", url + "/health")
    assert status == 200 and health["status"] == "ok" and health["model"] == NAME
    status, _, models = http("GET", url + "/v1/models", key=KEY)
    assert status == 200 and [model["id"] for model in models["data"]] == [NAME]
    assert metric(url, "vidcom2_requests_total", KEY, outcome="unauthorized") >= 2


def test_a_full_queue_answers_503_with_retry_after(served):
    url, server, _, _ = served
    scheduler = server.scheduler
    chat(url, "counting.mp4", "Warm?")  # cached: admission is immediate
    scheduler.max_queue, scheduler.batch_wait_s, scheduler.max_batch = 1, 3.0, 4
    outcome: dict[str, int] = {}
    waiting = threading.Thread(target=lambda: outcome.update(
        first=chat(url, "counting.mp4", "Warm?")[0]))
    try:
        waiting.start()
        deadline = time.monotonic() + 60
        while http("GET", url + "/health")[2]["queue"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        status, headers, body = chat(url, "counting.mp4", "Another?")
    finally:
        waiting.join()
        scheduler.max_queue, scheduler.batch_wait_s, scheduler.max_batch = 16, 0.005, 4
    assert status == 503 and body["error"]["code"] == "queue_full"
    assert int(headers["retry-after"]) >= 1
    assert outcome["first"] == 200
    assert chat(url, "counting.mp4", "And now?")[0] == 200


_STREAMER = """
import json, sys, time, urllib.request
body = {"model": sys.argv[2], "max_tokens": 3000, "stream": True, "messages": [{"role": "user",
        "content": [{"type": "video_url", "video_url": {"url": "scene_cut.mp4"}},
                    {"type": "text", "text": "Tell me everything."}]}]}
request = urllib.request.Request(sys.argv[1] + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Authorization": "Bearer " + sys.argv[3]})
with urllib.request.urlopen(request) as response:
    for line in response:
        if b'"content": "' in line and b'"role"' not in line:
            print("streaming", flush=True)
            time.sleep(600)
"""


def test_a_client_killed_mid_stream_stops_its_generation_not_the_server(served):
    url = served[0]
    cancelled = metric(url, "vidcom2_requests_total", KEY, outcome="cancelled")
    generated = metric(url, "vidcom2_completion_tokens_total", KEY)
    process = subprocess.Popen([sys.executable, "-c", _STREAMER, url, NAME, KEY],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "streaming"
    finally:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 300
    while metric(url, "vidcom2_requests_total", KEY, outcome="cancelled") == cancelled:
        assert time.monotonic() < deadline, "the stream's end was never noticed"
        time.sleep(0.1)
    status, _, answer = chat(url, "scene_cut.mp4", "Are you still there?")
    assert status == 200 and answer["choices"][0]["message"]["content"] is not None
    # the killed stream's 3000 tokens were never counted as answered
    assert metric(url, "vidcom2_completion_tokens_total", KEY) - generated < 3000


# --- the CLI as a client ---------------------------------------------------------------------

def test_ask_server_prints_what_a_local_ask_prints(served, monkeypatch, tmp_path):
    url, _, media, checkpoint = served
    monkeypatch.setenv("VIDCOM2_API_KEY", KEY)
    video = media / "counting.mp4"
    questions = ["What is shown?", "How many shapes?"]
    local = local_ask(checkpoint, video, *questions)
    remote = runner.invoke(app, ["ask", str(video), *questions, "--server", url, *FAST,
                                 "--json"])
    assert remote.exit_code == 0, remote.stderr
    remote_records = records(remote.stdout)
    assert [list(record) for record in remote_records] == [list(record) for record in local]
    assert [shared(record) for record in remote_records] == [shared(record) for record in local]

    quiet = [runner.invoke(app, ["ask", str(video), questions[0], *FAST, "-q", *where])
             for where in (["--server", url], ["--model", str(checkpoint), "--device", "cpu"])]
    assert quiet[0].exit_code == quiet[1].exit_code == 0
    assert quiet[0].stdout == quiet[1].stdout

    sheets = [tmp_path / "server.png", tmp_path / "local.png"]
    human = [runner.invoke(app, ["ask", str(video), questions[0], *FAST, "--heatmap",
                                 str(sheet), *where])
             for sheet, where in zip(sheets, (["--server", url],
                                              ["--model", str(checkpoint), "--device", "cpu"]),
                                     strict=True)]
    assert human[0].exit_code == human[1].exit_code == 0, human[0].stderr
    before_timing = [result.stdout.split("Timing")[0] for result in human]
    assert before_timing[0] == before_timing[1]
    assert "heatmap written to" in human[0].stdout
    pictures = [np.asarray(Image.open(sheet)) for sheet in sheets]
    assert pictures[0].shape == pictures[1].shape and (pictures[0] == pictures[1]).all()


def test_ask_server_errors_are_one_line(served, monkeypatch, tmp_path):
    url, _, media, _ = served
    monkeypatch.setenv("VIDCOM2_API_KEY", KEY)
    video = str(media / "counting.mp4")
    cases = [(["ask", video, "?", "--server", url, "--ratio", "0.5", "--method", "squeeze"],
              2, "--method:"),
             (["ask", video, "?", "--server", url, "--model", "other"], 2, "--model:"),
             (["ask", video, "?", "--server", url, "--device", "cpu"], 2, "--device:"),
             (["ask", str(tmp_path / "none.mp4"), "?", "--server", url], 2, "no such file"),
             (["ask", video, "?", "--server", "127.0.0.1:9"], 1, "vidcom2 serve")]
    for args, code, needle in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == code, (args, result.stderr)
        assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1
    monkeypatch.setenv("VIDCOM2_API_KEY", "wrong")
    result = runner.invoke(app, ["ask", video, "?", "--server", url])
    assert result.exit_code == 2 and "API key" in result.stderr


def test_ask_server_sends_videos_outside_the_media_root_as_data(served, monkeypatch,
                                                                 tmp_path):
    url, _, _, checkpoint = served
    monkeypatch.setenv("VIDCOM2_API_KEY", KEY)
    outside = tmp_path / "elsewhere.mp4"
    shutil.copy(SAMPLES / "scene_cut.mp4", outside)
    remote = runner.invoke(app, ["ask", str(outside), "What?", "--server", url, *FAST,
                                 "--json"])
    assert remote.exit_code == 0, remote.stderr
    assert shared(records(remote.stdout)[0]) == shared(local_ask(checkpoint, outside,
                                                                 "What?")[0])


def _batch_input(path: Path, media: Path) -> Path:
    return jsonl(path, [
        {"id": 1, "video": str(media / "color_change.mp4"), "question": "What changes?"},
        {"id": "two", "video": str(media / "scene_cut.mp4"), "question": "Which colour?",
         "options": ["red", "blue"], "answer": "A"},
        {"id": 3, "video": str(media / "color_change.mp4"), "question": "Is it bright?"},
        {"id": 4, "video": str(media / "missing.mp4"), "question": "?"},
        {"id": 5, "question": "no video"},
        "not json"])


def test_batch_server_writes_the_records_of_a_local_batch(served, monkeypatch, tmp_path):
    url, _, media, checkpoint = served
    monkeypatch.setenv("VIDCOM2_API_KEY", KEY)
    source = _batch_input(tmp_path / "in.jsonl", media)
    outputs = [tmp_path / "server.jsonl", tmp_path / "local.jsonl"]
    for out, where in zip(outputs, (["--server", url, "--concurrency", "3"],
                                    ["--model", str(checkpoint), "--device", "cpu"]),
                          strict=True):
        result = runner.invoke(app, ["batch", str(source), "--out", str(out), *FAST, *where])
        assert result.exit_code == 0, result.stderr
    remote, local = ({str(record["id"]): record for record in records(out.read_text())}
                     for out in outputs)
    assert set(remote) == set(local) == {"1", "two", "3", "4", "5", "line-6"}
    for ident in local:
        if "error" in local[ident]:
            assert remote[ident] == local[ident]
        else:
            assert list(remote[ident]) == list(local[ident])
            assert shared(remote[ident]) == shared(local[ident])


def test_batch_server_resumes_after_a_kill_with_each_id_once(served, tmp_path):
    url, _, media, _ = served
    source = jsonl(tmp_path / "in.jsonl", [
        {"id": index, "video": str(media / name), "question": f"Question {index}?"}
        for index, name in enumerate(["counting.mp4", "scene_cut.mp4"] * 4)])
    out = tmp_path / "out.jsonl"
    command = [str(Path(sys.executable).with_name("vidcom2")), "batch", str(source), "--out",
               str(out), "--server", url, "--concurrency", "1", "--frames", "6",
               "--max-new-tokens", "40"]
    process = subprocess.Popen(command, env={**os.environ, "VIDCOM2_API_KEY": KEY},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not out.exists() or out.read_text().count("\n") < 2:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = records(out.read_text().rsplit("\n", 1)[0])
    assert 2 <= len(written) < 8
    resumed = subprocess.run([*command, "--resume"], env={**os.environ, "VIDCOM2_API_KEY": KEY},
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    ids = [record["id"] for record in records(out.read_text())]
    assert sorted(ids) == list(range(8))


def test_ask_server_streams_in_a_terminal_like_a_local_ask(served, monkeypatch):
    from rich.console import Console

    from vidcom2_cli import cli

    url, _, media, checkpoint = served
    monkeypatch.setenv("VIDCOM2_API_KEY", KEY)
    video = media / "scene_cut.mp4"
    expected = local_ask(checkpoint, video, "Streamed?")[0]["answer"]
    monkeypatch.setattr(cli.console, "stdout", Console(force_terminal=True, width=160))
    result = runner.invoke(app, ["ask", str(video), "Streamed?", "--server", url, *FAST])
    assert result.exit_code == 0, result.stderr
    first, report = result.stdout.split("\n", 1)
    assert first.startswith("answer: ") and first.removeprefix("answer: ").strip() == expected
    assert "Retained tokens" in report and "Timing" in report and "╭" not in report
