"""A real ``vidcom2 serve`` app on a loopback port in this process, and plain HTTP to it."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from vidcom2_cli.serve.runner import bind, url_of


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` on a free loopback port from a thread; yields its base URL."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False,
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield url_of(sock, "127.0.0.1")
    finally:
        server.should_exit = True
        thread.join(120)


def http(method: str, url: str, body: Any = None, key: str | None = None,
         raw: bytes | None = None, timeout: float = 600) -> tuple[int, dict[str, str], Any]:
    """(status, headers, parsed JSON body or text) of one request."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, header, text = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, header, text = error.code, dict(error.headers), error.read()
    try:
        return status, header, json.loads(text)
    except ValueError:
        return status, header, text.decode()


def metric(url: str, name: str, key: str | None = None, **labels: str) -> float:
    """A sample's value from GET /metrics (0 when absent)."""
    _, _, text = http("GET", url + "/metrics", key=key)
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
                     if labels else "")
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


def video_message(url: str, question: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": question}]}]
