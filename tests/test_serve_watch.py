"""``vidcom2 serve --watch NAME=SOURCE``: questions over HTTP about a live stream the server
watches (a growing MPEG-TS file written by ``stream_senders.py``), on one tiny LLaVA-OneVision
server for the module, against ``vidcom2 watch``'s own memory over the same held chunks."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from serve_helpers import http, running, video_message

from vidcom2_cli.engine import Engine
from vidcom2_cli.models import LoadOptions
from vidcom2_cli.options import CompressionOptions, GenerationOptions, SamplingOptions
from vidcom2_cli.serve.app import ServerSettings, build_app
from vidcom2_cli.serve.protocol import ServeDefaults
from vidcom2_cli.serve.streams import Streams, WatchSettings, parse_watch

pytestmark = pytest.mark.slow
SENDERS = Path(__file__).with_name("stream_senders.py")
SCRIPT = Path(sys.executable).with_name("vidcom2")
NAME = "tiny-onevision"
SECONDS = 10  # of stream; chunks of 4 s at 1 frame per second: 3 chunks (the last 2 s)
GENERATION = GenerationOptions(max_new_tokens=6)
QUESTION = "What happens in the stream?"


@pytest.fixture(scope="module")
def served(tiny_checkpoints, tmp_path_factory):
    """(base URL, the streams, the first answer while nothing was encoded) of the module's
    server, watching one stream ``cam`` that has ended (so that what it holds stays put)."""
    folder = tmp_path_factory.mktemp("stream")
    path = folder / "cam.ts"
    sender = subprocess.Popen([sys.executable, str(SENDERS), "file", str(path), str(SECONDS),
                               "0.05"])
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    streams = Streams(parse_watch([f"cam={path}"]), WatchSettings(fps=1.0, chunk_s=4.0))
    streams.open_sources()
    engine = Engine.load(str(tiny_checkpoints("llava_onevision")),
                         LoadOptions(device="cpu", dtype="float32", attention="sdpa"))
    defaults = ServeDefaults(SamplingOptions(frames=6), CompressionOptions(ratio=0.25),
                             GENERATION)
    streams.attach(engine, defaults.compression, engine.pixel_bounds(defaults.sampling))
    app = build_app(engine, ServerSettings(served_model=NAME, defaults=defaults), streams)
    streams.engine_lock.acquire()  # the first chunk cannot be encoded while this is held
    held = True
    try:
        with running(app) as url:
            early = http("POST", url + "/v1/chat/completions",
                         {"model": NAME, "messages": video_message("stream://cam", QUESTION)})
            listed = http("GET", url + "/v1/streams")
            streams.engine_lock.release()
            held = False
            stream = streams.streams["cam"]
            assert stream.watcher.wait(300), "the stream did not end"
            sender.wait(60)
            yield url, streams, early, listed
    finally:
        if held:
            streams.engine_lock.release()
        sender.kill()
        sender.wait()


def test_a_stream_without_a_chunk_yet_is_503_with_retry_after(served):
    _, _, (status, headers, body), (_, _, listed) = served
    assert status == 503
    assert int({k.lower(): v for k, v in headers.items()}["retry-after"]) >= 1
    assert body["error"]["code"] == "stream_not_ready" and "'cam'" in body["error"]["message"]
    assert [entry["id"] for entry in listed["data"]] == ["cam"]
    assert listed["data"][0]["status"] == "waiting" and listed["data"][0]["chunks_held"] == 0


def test_question_about_the_stream_through_the_openai_client(served):
    url, streams, _, _ = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    response = client.chat.completions.create(
        model=NAME, messages=video_message("stream://cam", QUESTION), max_tokens=6)
    fields = response.model_extra["vidcom2"]
    memory = streams.streams["cam"].memory
    assert fields["stream"] == "cam"
    assert fields["chunks_held"] == len(memory.chunks) == 3
    assert fields["chunks_seen"] == 3
    assert fields["start_s"] == 0.0 and 8.0 < fields["end_s"] <= SECONDS
    assert fields["tokens_held"] == memory.tokens_held > 0
    assert fields["frames_skipped"] == 0 and fields["lag_s"] >= 0
    assert response.usage.completion_tokens == fields["generated"]
    assert response.usage.prompt_tokens > fields["tokens_held"]
    # watch's own memory, asked the same question over the same held chunks, answers the same
    local = memory.ask(QUESTION, GENERATION)
    assert response.choices[0].message.content == local.answer
    assert (local.start_s, local.chunks_held) == (fields["start_s"], fields["chunks_held"])


def test_streams_list_shows_the_ended_stream(served):
    url, _, _, _ = served
    status, _, listed = http("GET", url + "/v1/streams")
    assert status == 200
    (entry,) = listed["data"]
    assert entry["id"] == "cam" and entry["status"] == "ended"
    assert entry["ended"] == "end of source"
    assert entry["chunks_held"] == 3 and entry["tokens_held"] > 0
    assert "source" not in entry  # a source URL may hold a password


def test_unknown_stream_is_a_404_naming_it(served):
    url, _, _, _ = served
    status, _, body = http("POST", url + "/v1/chat/completions",
                           {"model": NAME, "messages": video_message("stream://door", QUESTION)})
    assert status == 404
    assert body["error"]["code"] == "stream_not_found"
    assert "'door'" in body["error"]["message"] and "cam" in body["error"]["message"]
    assert body["error"]["param"] == "messages[0].content[0].video_url.url"


@pytest.mark.parametrize(("extra", "param"), [
    ({"stream": True}, "stream"),
    ({"vidcom2": {"ratio": 0.5}}, "vidcom2"),
])
def test_what_a_stream_question_cannot_ask_is_400(served, extra, param):
    url, _, _, _ = served
    status, _, body = http("POST", url + "/v1/chat/completions",
                           {"model": NAME, "messages": video_message("stream://cam", QUESTION),
                            **extra})
    assert status == 400 and body["error"]["param"] == param


@pytest.mark.parametrize(("args", "needle"), [
    (["--watch", "cam"], "--watch: expected NAME=SOURCE, got 'cam'"),
    (["--watch", "a b=rtsp://host/x"], "--watch: stream name 'a b'"),
    (["--watch", "cam=rtsp://h/x", "--watch", "cam=rtsp://h/y"], "given twice"),
    (["--watch", "cam=/no/such/file.ts"], "--watch cam: /no/such/file.ts"),
    (["--watch", "cam=-"], "--watch cam: stdin"),
    (["--watch-fps", "0"], "--watch-fps:"),
    (["--forget", "never"], "--forget:"),
])
def test_bad_watch_options_are_one_line_before_any_model(args, needle):
    result = subprocess.run([str(SCRIPT), "serve", "--model", "random:none", *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stdout == "" and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
