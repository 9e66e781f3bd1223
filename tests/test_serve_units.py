"""The server's parts that need no model: the request schema, the media rules, the prefix
LRU, the answer's wire form, and the client's URL handling."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vidcom2_cli.compression import KeepPlan, Merges
from vidcom2_cli.heatmap import spatial_heatmap
from vidcom2_cli.models.conversation import Conversation, Message, head_key, template_messages
from vidcom2_cli.options import CompressionOptions, GenerationOptions, SamplingOptions
from vidcom2_cli.report import heatmap_summary
from vidcom2_cli.serve.client import chat_body, is_local, normalize_url
from vidcom2_cli.serve.media import MediaRules, TemporaryFiles, resolve_video
from vidcom2_cli.serve.metrics import ServerMetrics
from vidcom2_cli.serve.prefix_cache import PrefixEntry, PrefixLRU, held_bytes
from vidcom2_cli.serve.protocol import (
    APIError,
    ServeDefaults,
    from_input_error,
    parse_body,
    parse_chat_request,
)
from vidcom2_cli.serve.wire import PlanView

MODEL = "tiny"
DEFAULTS = ServeDefaults(SamplingOptions(frames=6), CompressionOptions(ratio=0.25),
                         GenerationOptions(max_new_tokens=7))


def body(**fields) -> dict:
    base = {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "clip.mp4"}},
        {"type": "text", "text": "What happens?"}]}]}
    base.update(fields)
    return base


def refused(payload: dict, status: int = 400) -> APIError:
    with pytest.raises(APIError) as caught:
        parse_chat_request(payload, MODEL, DEFAULTS, "onevision")
    assert caught.value.status == status
    return caught.value


# --- the request schema ------------------------------------------------------------------------

def test_a_plain_request_takes_the_servers_defaults():
    chat = parse_chat_request(body(), MODEL, DEFAULTS, "onevision")
    assert chat.video_url == "clip.mp4"
    assert chat.video_param == "messages[0].content[0].video_url.url"
    assert chat.question == "What happens?" and isinstance(chat.question, Conversation)
    assert chat.sampling == DEFAULTS.sampling and chat.compression == DEFAULTS.compression
    assert chat.generation.max_new_tokens == 7 and not chat.generation.do_sample
    assert not chat.stream


def test_request_fields_override_the_defaults():
    chat = parse_chat_request(body(
        max_tokens=5, max_completion_tokens=9, temperature=0.7, top_p=0.9, seed=3,
        stream=True, stream_options={"include_usage": True},
        vidcom2={"ratio": 0.5, "method": "visionzip", "frames": 4, "min_pixels": 1024,
                 "method_options": {"dominant_share": 0.5}}),
        MODEL, DEFAULTS, "onevision")
    assert chat.generation == GenerationOptions(max_new_tokens=9, do_sample=True,
                                                temperature=0.7, top_p=0.9, seed=3)
    assert chat.compression == CompressionOptions(0.5, "visionzip", 3,
                                                  (("dominant_share", 0.5),))
    assert chat.sampling.frames == 4 and chat.sampling.min_pixels == 1024
    assert chat.stream and chat.include_usage


def test_temperature_zero_is_greedy_and_frames_replace_a_default_fps():
    defaults = ServeDefaults(SamplingOptions(frames=6, fps=2.0))
    chat = parse_chat_request(body(temperature=0, top_p=0.5, vidcom2={"frames": 3}), MODEL,
                              defaults, "onevision")
    assert not chat.generation.do_sample and chat.generation.top_p is None
    assert chat.sampling.frames == 3 and chat.sampling.fps is None


def test_several_turns_and_a_system_message_become_one_conversation():
    chat = parse_chat_request(body(messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "video_url", "video_url": {"url": "a.mp4"}},
                                     {"type": "text", "text": "What happens?"}]},
        {"role": "assistant", "content": "A ball rolls."},
        {"role": "user", "content": [{"type": "text", "text": "Which"},
                                     {"type": "text", "text": "colour?"}]}]),
        MODEL, DEFAULTS, "onevision")
    question = chat.question
    assert question == "Which\ncolour?"
    assert question.before == (Message("system", "Be brief."),)
    assert question.video_text == "What happens?"
    assert question.after == (Message("assistant", "A ball rolls."),
                              Message("user", "Which\ncolour?"))
    roles = [message["role"] for message in template_messages(question)]
    assert roles == ["system", "user", "assistant", "user"]
    assert head_key(question) != "" and head_key("plain question") == ""


@pytest.mark.parametrize(("payload", "status", "param"), [
    (body(model="other"), 404, "model"),
    (body(model=None), 400, "model"),
    (body(messages=[]), 400, "messages"),
    (body(messages=[{"role": "user", "content": "no video here"}]), 400, "messages"),
    (body(messages=[{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "a.mp4"}},
        {"type": "video_url", "video_url": {"url": "b.mp4"}},
        {"type": "text", "text": "?"}]}]), 400, "messages[0].content[1]"),
    (body(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "a.png"}}]}]), 400,
     "messages[0].content[0]"),
    (body(messages=[{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "a.mp4"}}]}]), 400, "messages[0].content"),
    (body(messages=[{"role": "tool", "content": "x"}]), 400, "messages[0].role"),
    (body(messages=[{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "a.mp4"}}, {"type": "text", "text": "?"}]},
        {"role": "assistant", "content": "..."}]), 400, "messages[1].role"),
    (body(max_tokens=0), 400, "max_tokens"),
    (body(max_completion_tokens="9"), 400, "max_completion_tokens"),
    (body(temperature=3), 400, "temperature"),
    (body(top_p=0), 400, "top_p"),
    (body(seed=1.5), 400, "seed"),
    (body(n=2), 400, "n"),
    (body(stop=["\n"]), 400, "stop"),
    (body(stream_options={"include_usage": True}), 400, "stream_options"),
    (body(vidcom2={"ratio": 1.5}), 400, "vidcom2.ratio"),
    (body(vidcom2={"ratio": "half"}), 400, "vidcom2.ratio"),
    (body(vidcom2={"method": "nosuch"}), 400, "vidcom2.method"),
    (body(vidcom2={"method_options": {"nosuch": 1}}), 400, "vidcom2.method_options"),
    (body(vidcom2={"frames": 0}), 400, "vidcom2.frames/fps/max_frames"),
    (body(vidcom2={"bogus": 1}), 400, "vidcom2.bogus"),
    (body(vidcom2=[1]), 400, "vidcom2"),
])
def test_every_bad_field_is_named(payload, status, param):
    error = refused(payload, status)
    assert error.param == param
    assert error.message.startswith(param)
    assert "\n" not in error.message
    assert error.body()["error"]["param"] == param


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b"\xff\xfe", b"null"])
def test_a_body_that_is_no_json_object_is_refused(raw):
    with pytest.raises(APIError) as caught:
        parse_body(raw)
    assert caught.value.status == 400 and caught.value.message.startswith("body:")


def test_engine_messages_are_named_by_request_fields():
    error = from_input_error(ValueError("/tmp/x/abc.mp4: the prompt is 900 tokens after "
                                        "compression (reaching position 900) and up to 9000 "
                                        "more are generated, but the model's context is 4096 "
                                        "tokens; lower --frames or --ratio, shorten the "
                                        "question, or lower --max-new-tokens"),
                             "/tmp/x/abc.mp4", "messages[0].content[0].video_url.url")
    assert error.param == "max_tokens" and error.code == "context_length_exceeded"
    assert "/tmp/x" not in error.message and "--" not in error.message
    assert "vidcom2.frames" in error.message and "max_tokens" in error.message


# --- the media rules ---------------------------------------------------------------------------

@pytest.fixture
def media(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "clip.mp4").write_bytes(b"inside")
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"outside")
    (root / "link.mp4").symlink_to(outside)
    (root / "inner-link.mp4").symlink_to(root / "sub" / "clip.mp4")
    files = TemporaryFiles(tmp_path / "uploads")
    files.directory.mkdir()
    return MediaRules(root.resolve(), max_bytes=64), files, outside


def test_paths_under_the_root_are_read(media):
    rules, files, _ = media
    for url in ("sub/clip.mp4", str(rules.root / "sub" / "clip.mp4"), "inner-link.mp4",
                (rules.root / "sub" / "clip.mp4").as_uri(), "sub/../sub/clip.mp4"):
        video = resolve_video(url, "p", rules, files)
        assert video.path == rules.root / "sub" / "clip.mp4" and not video.temporary


@pytest.mark.parametrize("url", ["../secret.mp4", "sub/../../secret.mp4", "link.mp4",
                                 "ABSOLUTE", "FILE_URL"])
def test_paths_outside_the_root_are_refused(media, url):
    rules, files, outside = media
    url = {"ABSOLUTE": str(outside), "FILE_URL": outside.as_uri()}.get(url, url)
    with pytest.raises(APIError) as caught:
        resolve_video(url, "messages[0].content[0].video_url.url", rules, files)
    assert caught.value.status == 403 and caught.value.code == "media_outside_root"
    assert caught.value.message.startswith("messages[0].content[0].video_url.url: ")


@pytest.mark.parametrize(("url", "status", "code"), [
    ("missing.mp4", 400, "video_not_found"),
    ("sub", 400, "video_unreadable"),
    ("http://127.0.0.1:9/a.mp4", 403, "remote_media_disabled"),
    ("ftp://host/a.mp4", 400, "unsupported_url"),
    ("file://otherhost/a.mp4", 400, None),
    ("data:video/mp4,plain", 400, "invalid_data_url"),
    ("data:video/mp4;base64,@@@", 400, "invalid_data_url"),
    ("data:text/plain;base64,aGVsbG8=", 400, "invalid_data_url"),
    ("data:video/mp4;base64," + base64.b64encode(b"x" * 200).decode(), 413, "media_too_large"),
])
def test_bad_video_urls_are_refused(media, url, status, code):
    rules, files, _ = media
    with pytest.raises(APIError) as caught:
        resolve_video(url, "v", rules, files)
    assert caught.value.status == status and caught.value.code == code
    assert caught.value.param == "v"


def test_data_urls_share_a_temporary_file_until_the_last_user_is_done(media):
    rules, files, _ = media
    url = "data:video/mp4;base64," + base64.b64encode(b"a small video").decode()
    first, second = (resolve_video(url, "v", rules, files) for _ in range(2))
    assert first.path == second.path and first.path.read_bytes() == b"a small video"
    assert first.path.suffix == ".mp4" and first.temporary
    assert "base64" in first.label and len(first.label) < 60
    files.release(first)
    assert second.path.exists()
    files.release(second)
    assert not second.path.exists()


# --- the prefix cache --------------------------------------------------------------------------

def entry(keys: list[str], nbytes: int) -> PrefixEntry:
    return PrefixEntry(opened=None, keys=keys, nbytes=nbytes)  # type: ignore[arg-type]


def test_the_prefix_cache_keeps_what_fits_and_drops_the_least_recently_used():
    cache = PrefixLRU(100, ServerMetrics())
    a, b, c = entry(["a1", "a2"], 40), entry(["b"], 40), entry(["c"], 40)
    assert cache.put(a) and cache.put(b)
    assert cache.get("a2") == (a, 1)  # a is now the most recently used
    assert cache.put(c)  # 120 > 100: b, the least recently used, leaves
    assert "b" not in cache and "a1" in cache and "c" in cache
    assert cache.nbytes == 80
    assert not cache.put(entry(["huge"], 101)) and "huge" not in cache
    assert PrefixLRU(0, ServerMetrics()).put(entry(["x"], 1)) is False


def test_held_bytes_counts_each_storage_once():
    tensor = torch.zeros(10, 10)  # 400 bytes
    view = tensor[:5]
    holder = {"a": [tensor, view], "b": (np.zeros(25, dtype=np.float64),)}  # + 200 bytes
    assert held_bytes(holder) == 600


# --- the wire form of an answer ----------------------------------------------------------------

def test_a_plan_rebuilt_from_its_masks_renders_like_the_plan():
    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(5, 96 * 30, generator=generator) < 0.3
    flat = mask.reshape(-1).nonzero().squeeze(1)
    dropped = (~mask.reshape(-1)).nonzero().squeeze(1)
    merges = Merges.from_groups([(int(flat[0]), [int(flat[0]), int(dropped[0]),
                                                 int(dropped[1])], [0.5, 0.25, 0.25])])
    plan = KeepPlan(mask, "holitom", 0.3, (30, 96), merges)
    view = PlanView(mask.numpy(), "holitom", 0.3, (30, 96), plan.merged_mask().numpy(),
                    plan.total_merge_targets)
    assert view.counts == plan.counts and view.kept_ratio == plan.kept_ratio
    assert view.total_merged == plan.total_merged == 2
    assert spatial_heatmap(view) == spatial_heatmap(plan)

    from rich.console import Console

    def rendered(shown) -> str:
        console = Console(width=100, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
        console.print(heatmap_summary(shown, 1))
        return console.export_text()

    assert rendered(view) == rendered(plan)


# --- the client ----------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "expected"), [
    ("127.0.0.1:8000", "http://127.0.0.1:8000"), ("http://host:1/v1/", "http://host:1"),
    ("https://example.org", "https://example.org")])
def test_server_urls_are_normalized(given, expected):
    assert normalize_url(given) == expected


def test_loopback_servers_are_local():
    assert is_local("http://127.0.0.1:1") and is_local("http://localhost:1")
    assert not is_local("http://10.0.0.1:1")


def test_a_request_body_is_openai_json():
    payload = chat_body("m", "file:///a.mp4", "Why?", {"ratio": 0.5}, {"max_tokens": 3})
    assert json.loads(json.dumps(payload)) == {
        "model": "m", "max_tokens": 3, "vidcom2": {"ratio": 0.5},
        "messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": "file:///a.mp4"}},
            {"type": "text", "text": "Why?"}]}]}


def test_the_media_root_is_compared_after_resolving(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.mp4").write_bytes(b"x")
    alias = tmp_path / "alias"
    alias.symlink_to(real)
    files = TemporaryFiles(tmp_path / "up")
    rules = MediaRules(Path(os.path.realpath(alias)))
    assert resolve_video(str(alias / "a.mp4"), "v", rules, files).path == real / "a.mp4"


@pytest.fixture
def web(tmp_path):
    """A loopback HTTP server of tmp_path's files."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_remote_videos_are_downloaded_within_the_limits(media, web, tmp_path):
    rules, files, _ = media
    (tmp_path / "small.mp4").write_bytes(b"v" * 50)
    (tmp_path / "large.mp4").write_bytes(b"v" * 500)
    allowed = MediaRules(rules.root, allow_remote=True, max_bytes=64, download_timeout_s=30)
    video = resolve_video(f"{web}/small.mp4", "v", allowed, files)
    assert video.temporary and video.path.read_bytes() == b"v" * 50
    assert video.label == f"{web}/small.mp4"
    for url, status, code in ((f"{web}/large.mp4", 413, "media_too_large"),
                              (f"{web}/missing.mp4", 400, "download_failed")):
        with pytest.raises(APIError) as caught:
            resolve_video(url, "v", allowed, files)
        assert (caught.value.status, caught.value.code) == (status, code)
    assert not list(files.directory.glob("*.part"))  # nothing half-written is left
