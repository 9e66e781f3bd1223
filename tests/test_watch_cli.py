"""`vidcom2 watch` end to end on loopback sources: a growing MPEG-TS file written by PyAV while
watch reads it, stdin, MPEG-TS over UDP to 127.0.0.1 that drops and comes back, and sources
that never open (one line, before torch is imported)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import pty
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(sys.executable).with_name("vidcom2")
SENDERS = str(Path(__file__).with_name("stream_senders.py"))
FAST = ["--device", "cpu", "--dtype", "float32", "--max-new-tokens", "3"]
QUESTION = "What happens?"
TORCH_CHECK = ("import atexit, sys; atexit.register(lambda: print('torch loaded:', "
               "'torch' in sys.modules, file=sys.stderr)); sys.argv = ['vidcom2'] + "
               "sys.argv[1:]; from vidcom2_cli.cli import main; main()")


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def summary_numbers(stderr: str) -> dict[str, int]:
    """The counts of the closing summary ("N chunks, M frames, K encodes", ...)."""
    words = stderr.replace(",", " ").replace(";", " ").split()
    found = {}
    for index, word in enumerate(words[1:], start=1):
        if word in ("chunks", "frames", "encodes") and words[index - 1].isdigit():
            found.setdefault(word, int(words[index - 1]))
        if word == "reconnections" and words[index + 1].isdigit():
            found["reconnections"] = int(words[index + 1])
    return found


@pytest.fixture(scope="module")
def stream_file(tmp_path_factory) -> Path:
    """A finished 12-second MPEG-TS stream (4 fps, a new picture every second)."""
    path = tmp_path_factory.mktemp("streams") / "done.ts"
    subprocess.run([sys.executable, SENDERS, "file", str(path), "12", "0"], check=True)
    return path


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl"])
def test_a_growing_file_is_watched_while_it_is_written(family, tiny_checkpoints, tmp_path):
    """The writer appends a second of stream every 0.3 s; watch follows it to its end and
    answers every 4 s of stream, each chunk encoded once."""
    path = tmp_path / "live.ts"
    path.write_bytes(b"")
    writer = subprocess.Popen([sys.executable, SENDERS, "file", str(path), "12", "0.3"])
    try:
        run = subprocess.run(
            [str(SCRIPT), "watch", str(path), "--ask", QUESTION, "--every", "4", "--chunk", "2",
             "--idle", "3", "-m", str(tiny_checkpoints(family)), *FAST],
            capture_output=True, text=True, timeout=300)
    finally:
        writer.wait(timeout=60)
    assert run.returncode == 0, run.stderr
    records = answers(run.stdout)
    assert [record["end_s"] for record in records] == [4.0, 8.0, 12.0]
    assert [record["chunks_seen"] for record in records] == [2, 4, 6]
    assert all(record["question"] == QUESTION and record["start_s"] == 0.0
               for record in records)
    counts = summary_numbers(run.stderr)
    assert counts["chunks"] == 6 and counts["frames"] == 12 and counts["encodes"] == 6
    assert "ended: end of source" in run.stderr and "Traceback" not in run.stderr
    assert all(len(line) <= 80 for line in run.stderr.splitlines())


def test_stdin_is_a_source(stream_file, tiny_checkpoints):
    with stream_file.open("rb") as video:
        run = subprocess.run(
            [str(SCRIPT), "watch", "-", "--format", "mpegts", "--ask", QUESTION,
             "--duration", "8", "--memory-tokens", "60", "--forget", "oldest",
             "-m", str(tiny_checkpoints("llava_onevision")), *FAST],
            stdin=video, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    records = answers(run.stdout)
    assert [record["end_s"] for record in records] == [4.0, 8.0]
    assert all(record["tokens_held"] <= 60 for record in records)
    assert "ended: duration" in run.stderr


def test_questions_from_stdin_get_json_answers(stream_file, tiny_checkpoints):
    run = subprocess.run(
        [str(SCRIPT), "watch", str(stream_file), "--idle", "1",
         "-m", str(tiny_checkpoints("qwen2_vl")), *FAST],
        input=f"{QUESTION}\n\nIs it moving?\n", capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    records = answers(run.stdout)
    assert [record["question"] for record in records] == [QUESTION, "Is it moving?"]
    assert all(record["chunks_seen"] >= 1 for record in records)


def test_a_dropped_udp_source_that_comes_back_is_resumed(tiny_checkpoints):
    """MPEG-TS over UDP to 127.0.0.1: 6 s, silence for 3 s, 6 s more (its times start from 0
    again); watch notices the drop, reopens, and the stream time goes on past the gap."""
    port = free_port(socket.SOCK_DGRAM)
    watcher = subprocess.Popen(
        [str(SCRIPT), "watch", f"udp://127.0.0.1:{port}", "--ask", QUESTION, "--chunk", "2",
         "--silence", "1", "--reconnect", "4", "--open-timeout", "30",
         "-m", str(tiny_checkpoints("llava_onevision")), *FAST],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sender = subprocess.Popen([sys.executable, SENDERS, "udp", str(port), "6", "3", "6"])
    try:
        sender.wait(timeout=120)
        stdout, stderr = watcher.communicate(timeout=180)
    finally:
        sender.kill()
        watcher.kill()
    assert watcher.returncode == 0, stderr
    assert "source dropped" in stderr and "reconnected" in stderr
    assert summary_numbers(stderr)["reconnections"] >= 1
    ends = [record["end_s"] for record in answers(stdout)]
    assert ends == sorted(ends) and ends[-1] > 9.0  # after the gap, time went on


def never_opens(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TORCH_CHECK, "watch", *args, "-m",
                           "random:llava-onevision-0.5b"],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("source, reason", [
    ("missing.ts", "no such file"),
    ("udp://127.0.0.1:{udp}", "nothing received within 1 s"),
    ("http://127.0.0.1:{tcp}/live.m3u8", "cannot be opened"),
])
def test_a_source_that_never_opens_is_one_line_before_torch(source, reason, tmp_path):
    source = source.format(udp=free_port(socket.SOCK_DGRAM), tcp=free_port(socket.SOCK_STREAM))
    if not source.startswith(("udp", "http")):
        source = str(tmp_path / source)
    run = never_opens([source, "--open-timeout", "1"])
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and reason in lines[0]
    assert source in lines[0]
    assert lines[1] == "torch loaded: False"


@pytest.mark.parametrize("args, message", [
    (["--every", "5"], "--every: needs --ask"),
    (["--forget", "newest"], "--forget: must be one of oldest, compress"),
    (["--chunk", "0"], "--chunk: must be above 0"),
    (["--until", "25:99"], "--until: not a time of day"),
    (["--memory-tokens", "-1"], "--memory-tokens"),
])
def test_bad_options_are_one_line(args, message, stream_file):
    run = never_opens([str(stream_file), *args])
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 2 and message in lines[0] and lines[1] == "torch loaded: False"


def test_stdin_as_the_source_needs_a_question_option():
    run = never_opens(["-"])
    assert run.returncode == 2 and "give the question with --ask" in run.stderr


def test_ctrl_c_ends_with_a_summary(tiny_checkpoints, tmp_path):
    """SIGINT after the first answer: the watch stops cleanly, exit 0, the summary says so."""
    path = tmp_path / "long.ts"
    path.write_bytes(b"")
    writer = subprocess.Popen([sys.executable, SENDERS, "file", str(path), "120", "0.5"])
    watcher = subprocess.Popen(
        [str(SCRIPT), "watch", str(path), "--ask", QUESTION, "--chunk", "2",
         "-m", str(tiny_checkpoints("qwen2_vl")), *FAST],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a test run started in the background inherits SIGINT ignored; Ctrl-C is the point
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = json.loads(watcher.stdout.readline())
        watcher.send_signal(signal.SIGINT)
        _, stderr = watcher.communicate(timeout=120)
    finally:
        watcher.kill()
        writer.kill()
    assert watcher.returncode == 0, stderr
    assert first["end_s"] == 2.0
    assert "ended: stopped" in stderr and "Traceback" not in stderr
    assert summary_numbers(stderr)["encodes"] >= 1


def test_questions_typed_at_a_terminal_are_answered(stream_file, tiny_checkpoints):
    """stdin a terminal (a pseudo-terminal here): a typed question gets an answer and its
    footer; Ctrl-D ends."""
    leader, follower = pty.openpty()
    watcher = subprocess.Popen(
        [str(SCRIPT), "watch", str(stream_file), "--idle", "1",
         "-m", str(tiny_checkpoints("llava_onevision")), *FAST],
        stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(follower)
    try:
        os.write(leader, f"{QUESTION}\n".encode())
        os.write(leader, b"\n\x04")  # an empty line (the memory), then Ctrl-D
        _, stderr = watcher.communicate(timeout=300)
    finally:
        watcher.kill()
        os.close(leader)
    assert watcher.returncode == 0, stderr
    assert "stream 0:00-" in stderr and "tokens held" in stderr
    assert "holding 0:00-" in stderr
    assert all(len(line) <= 80 for line in stderr.splitlines())


def test_a_stream_over_http_is_read_to_its_end(stream_file, tiny_checkpoints):
    """An MPEG-TS stream served over HTTP on 127.0.0.1: read as a network source; its clean
    end ends the watch (it is not a drop, so it is not replayed)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(stream_file.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *args: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{stream_file.name}"
        run = subprocess.run(
            [str(SCRIPT), "watch", url, "--ask", QUESTION, "--every", "6",
             "-m", str(tiny_checkpoints("qwen2_vl")), *FAST],
            capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
        server.server_close()
    assert run.returncode == 0, run.stderr
    assert [record["end_s"] for record in answers(run.stdout)] == [8.0, 12.0]
    assert "ended: end of source" in run.stderr and "reconnect" not in run.stderr.split("\n")[0]
    assert summary_numbers(run.stderr)["reconnections"] == 0
