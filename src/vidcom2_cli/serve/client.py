"""A client of ``vidcom2 serve`` for ``ask --server`` and ``batch --server``: the standard
library's HTTP and JSON only (no torch, no transformers, no HTTP package), so that a script
calling ``vidcom2 ask --server`` in a loop pays a fraction of a second per call.

A local video goes to a server on this machine as a ``file://`` URL (no copy); when that
server does not read the file (outside its media root), and to any other server, it goes as a
``data:`` URL.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import EXTRA_FIELD

SERVER_VARIABLE = "VIDCOM2_SERVER"
KEY_VARIABLE = "VIDCOM2_API_KEY"
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")


class ServerError(Exception):
    """The server refused or failed a request: its HTTP status and one-line message."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after


class ServerUnreachable(ServerError):
    """Nothing answers at the server's address."""


@dataclass
class Reply:
    """One answer: the text, and the server's ``vidcom2`` field."""

    text: str
    fields: dict[str, Any]
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)


def normalize_url(url: str) -> str:
    """The server's base URL, without a trailing ``/`` or ``/v1``; a bare HOST:PORT means
    http."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    return url.removesuffix("/v1")


def is_local(url: str) -> bool:
    return (urllib.parse.urlparse(url).hostname or "") in _LOOPBACK


class Client:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 3600.0) -> None:
        self.url = normalize_url(url)
        self.api_key = api_key
        self.timeout = timeout

    # --- requests ----------------------------------------------------------------------------

    def served_model(self) -> str:
        """The name of the model the server serves (GET /v1/models)."""
        models = self._json("GET", "/v1/models")
        data = models.get("data") or []
        if not data:
            raise ServerError(502, f"{self.url} serves no model")
        return str(data[0]["id"])

    def chat(self, body: dict[str, Any], on_text: Callable[[str], None] | None = None
             ) -> Reply:
        """POST a chat completion; streamed (``on_text`` receiving the text as it comes)
        when ``on_text`` is given."""
        if on_text is None:
            payload = self._json("POST", "/v1/chat/completions", body)
            choice = payload["choices"][0]
            return Reply(choice["message"]["content"] or "", payload.get(EXTRA_FIELD) or {},
                         choice.get("finish_reason"), payload.get("usage") or {})
        streamed = dict(body, stream=True, stream_options={"include_usage": True})
        texts: list[str] = []
        reply = Reply("", {})
        for event in self._events("/v1/chat/completions", streamed):
            if "error" in event:
                raise _error_of(event, 500)
            if event.get("usage"):
                reply.usage = event["usage"]
            if EXTRA_FIELD in event:
                reply.fields = event[EXTRA_FIELD]
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    texts.append(text)
                    on_text(text)
                if choice.get("finish_reason"):
                    reply.finish_reason = choice["finish_reason"]
        reply.text = "".join(texts)
        return reply

    # --- HTTP --------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None
                 ) -> urllib.request.Request:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return urllib.request.Request(self.url + path, data=data, headers=headers,
                                      method=method)

    def _open(self, request: urllib.request.Request) -> Any:
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            raise _http_error(error) from None
        except OSError as error:  # refused, unknown host, timed out
            reason = getattr(error, "reason", error)
            raise ServerUnreachable(
                0, f"--server: no vidcom2 server answers at {self.url} ({reason}); start one "
                f"with `vidcom2 serve --model MODEL --port "
                f"{urllib.parse.urlparse(self.url).port or 80}`") from None

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None
              ) -> dict[str, Any]:
        with self._open(self._request(method, path, body)) as response:
            return json.loads(response.read())

    def _events(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The JSON events of a server-sent event stream, until ``data: [DONE]``."""
        with self._open(self._request("POST", path, body)) as response:
            try:
                for raw in response:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:"):].strip()
                    if data == "[DONE]":
                        return
                    yield json.loads(data)
            except OSError as error:
                raise ServerError(502, f"{self.url} closed the stream ({error})") from None
        raise ServerError(502, f"{self.url} ended the stream without data: [DONE]")


def _http_error(error: urllib.error.HTTPError) -> ServerError:
    try:
        payload = json.loads(error.read() or b"{}")
    except ValueError:
        payload = {}
    retry = error.headers.get("Retry-After") if error.headers else None
    return _error_of(payload, error.code, float(retry) if retry and retry.isdigit() else None)


def _error_of(payload: dict[str, Any], status: int, retry_after: float | None = None
              ) -> ServerError:
    detail = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(detail, dict):
        return ServerError(status, str(detail.get("message") or f"HTTP {status}"),
                           detail.get("param"), detail.get("code"), retry_after)
    return ServerError(status, f"the server answered HTTP {status}", retry_after=retry_after)


# --- request bodies ---------------------------------------------------------------------------

def file_url(path: Path) -> str:
    return path.resolve().as_uri()


def data_url(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if not kind.startswith(("video/", "image/")):
        kind = "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def chat_body(model: str, video_url: str, question: str, settings: dict[str, Any],
              generation: dict[str, Any]) -> dict[str, Any]:
    """A chat completion request: one user message with the video and the question, the
    generation fields (max_tokens, temperature, top_p, seed) and vidcom2's settings."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": video_url}},
            {"type": "text", "text": question}]}],
        **generation}
    if settings:
        body[EXTRA_FIELD] = settings
    return body


def ask(client: Client, model: str, video: Path, question: str, settings: dict[str, Any],
        generation: dict[str, Any], on_text: Callable[[str], None] | None = None) -> Reply:
    """One question about a local video: sent as a file URL to a server on this machine (as
    a data URL when it does not read that file, and to other servers)."""
    if is_local(client.url):
        try:
            return client.chat(chat_body(model, file_url(video), question, settings,
                                         generation), on_text)
        except ServerError as error:
            if error.code != "media_outside_root":
                raise
    return client.chat(chat_body(model, data_url(video), question, settings, generation),
                       on_text)
