"""The ``vidcom2 serve`` command as a process: refusals at start, and SIGTERM finishing the
request in flight before the process ends."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(sys.executable).with_name("vidcom2")
SAMPLES = Path(__file__).resolve().parents[1] / "sample_videos"


def serve(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), "serve", *args], capture_output=True, text=True,
                          timeout=300, **kwargs)


@pytest.mark.parametrize(("args", "needle"), [
    (["--host", "0.0.0.0"], "--host: 0.0.0.0 is reachable from other machines"),
    (["--port", "70000"], "--port:"),
    (["--media-root", "/no/such/folder"], "--media-root:"),
    (["--max-batch", "0"], "--max-batch:"),
    (["--api-key", " "], "--api-key:"),
])
def test_bad_server_options_are_one_line_before_any_model(args, needle):
    result = serve("--model", "random:none", *args)
    assert result.returncode == 2
    assert result.stdout == "" and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_port_in_use_is_one_line(tiny_checkpoints):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve("--model", str(tiny_checkpoints("llava_onevision")), "--port",
                       str(port), "--device", "cpu")
    assert result.returncode == 2
    assert f"127.0.0.1:{port} (in use)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_sigterm_finishes_the_request_in_flight_then_stops(tiny_checkpoints):
    process = subprocess.Popen(
        [str(SCRIPT), "serve", "--model", str(tiny_checkpoints("llava_onevision")), "--port",
         "0", "--device", "cpu", "--media-root", str(SAMPLES), "--frames", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in process.stderr:
            found = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", line)
            if found:
                url = found.group(1)
                break
        assert url is not None, "the server never said where it listens"
        lines: list[str] = []
        first_text = threading.Event()

        def stream() -> None:
            body = {"model": str(tiny_checkpoints("llava_onevision")), "max_tokens": 2000,
                    "stream": True, "messages": [{"role": "user", "content": [
                        {"type": "video_url", "video_url": {"url": "counting.mp4"}},
                        {"type": "text", "text": "Tell me everything."}]}]}
            request = urllib.request.Request(url + "/v1/chat/completions",
                                             json.dumps(body).encode())
            with urllib.request.urlopen(request, timeout=600) as response:
                for raw in response:
                    line = raw.decode().strip()
                    if line:
                        lines.append(line)
                    if '"content": "' in line and '"role"' not in line:
                        first_text.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first_text.wait(300), "no text was streamed"
        process.send_signal(signal.SIGTERM)
        reader.join(600)
        assert lines[-1] == "data: [DONE]"  # the stream in flight was finished
        closing = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]][-1]
        assert closing["choices"][0]["finish_reason"] in ("length", "stop")
        assert process.wait(300) == 0
        rest = process.stderr.read()
        assert "server stopped" in rest and "Traceback" not in rest
        assert re.search(r"POST /v1/chat/completions 200 \d+ ms", rest)
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(url + "/health", timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
