"""``vidcom2 serve --ray``: the same API on Ray Serve, 2 local replicas of a tiny model (one
Ray and one deployment for the module, started by the command itself)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import openai
import pytest
from jsonl_files import records
from serve_helpers import http, video_message
from typer.testing import CliRunner

from vidcom2_cli.cli import app

pytestmark = pytest.mark.slow
SCRIPT = Path(sys.executable).with_name("vidcom2")
SAMPLES = Path(__file__).resolve().parents[1] / "sample_videos"
KEY = "ray-key"
NAME = "tiny"
runner = CliRunner()


@pytest.fixture(scope="module")
def ray_served(tiny_checkpoints):
    checkpoint = tiny_checkpoints("llava_onevision")
    process = subprocess.Popen(
        [str(SCRIPT), "serve", "--ray", "--replicas", "2", "--model", str(checkpoint),
         "--served-model-name", NAME, "--port", "0", "--device", "cpu", "--api-key", KEY,
         "--media-root", str(SAMPLES), "--frames", "4", "--max-new-tokens", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = None
    seen = []
    for line in process.stderr:
        seen.append(line)
        found = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", line)
        if found:
            url = found.group(1)
            break
    if url is None:
        process.kill()
        raise AssertionError("serve --ray did not start: " + "".join(seen[-5:]))
    yield url, process, checkpoint
    if process.poll() is None:
        process.kill()
        process.wait()


def test_replicas_answer_as_a_local_ask_does(ray_served):
    url, _, checkpoint = ray_served
    result = runner.invoke(app, ["ask", str(SAMPLES / "scene_cut.mp4"), "What happens?",
                                 "--model", str(checkpoint), "--device", "cpu", "--frames", "4",
                                 "--max-new-tokens", "5", "--json"])
    assert result.exit_code == 0, result.stderr
    local = records(result.stdout)[0]
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=600)
    messages = video_message("scene_cut.mp4", "What happens?")
    sync = client.chat.completions.create(model=NAME, messages=messages)
    chunks = list(client.chat.completions.create(
        model=NAME, messages=messages, stream=True, stream_options={"include_usage": True}))
    assert sync.choices[0].message.content == local["answer"] == "".join(
        chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert sync.usage.prompt_tokens == chunks[-1].usage.prompt_tokens == (
        local["tokens"]["prompt_kept"])
    assert sync.usage.completion_tokens == local["tokens"]["generated"]

    processes: set[int] = set()
    answers: list[str] = []

    def ask() -> None:
        reply = client.chat.completions.create(model=NAME, messages=messages)
        answers.append(reply.choices[0].message.content)
        processes.add(reply.model_extra["vidcom2"]["server"]["process"])

    for _ in range(4):  # until both replicas have answered
        threads = [threading.Thread(target=ask) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if len(processes) == 2:
            break
    assert len(processes) == 2
    assert set(answers) == {local["answer"]}


def test_refusals_are_the_same_json_errors(ray_served):
    url = ray_served[0]
    body = {"model": NAME, "messages": video_message("../README.md", "?")}
    status, _, answer = http("POST", url + "/v1/chat/completions", body, key=KEY)
    assert status == 403 and answer["error"]["code"] == "media_outside_root"
    status, _, answer = http("POST", url + "/v1/chat/completions",
                             {**body, "vidcom2": {"ratio": 2}}, key=KEY)
    assert status == 400 and answer["error"]["param"] == "vidcom2.ratio"
    assert http("POST", url + "/v1/chat/completions", body)[0] == 401
    assert http("GET", url + "/health")[0] == 200
    status, _, answer = http("POST", url + "/v1/chat/completions",
                             {"model": NAME, "messages": video_message("counting.mp4", "?")},
                             key=KEY)
    assert status == 200 and answer["choices"][0]["message"]["content"] is not None


def test_sigterm_stops_the_replicas_and_ray(ray_served):
    _, process, _ = ray_served
    process.send_signal(signal.SIGTERM)
    assert process.wait(300) == 0
    rest = process.stderr.read()
    assert "server stopped" in rest and "Traceback" not in rest
