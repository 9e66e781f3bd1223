"""Binding the address and running uvicorn: the socket is bound before the server starts, so
that a port in use is one line naming it, and port 0 gets a free port that is then announced.

uvicorn handles SIGTERM and Ctrl-C: it stops accepting connections, finishes the requests in
flight (streams included), then runs the app's shutdown, which stops the engine thread.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("vidcom2.serve")


class BindError(OSError):
    """The address cannot be listened on (in use, not an address of this machine)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as error:
        sock.close()
        reason = "in use" if error.errno == 98 else (error.strerror or str(error))
        raise BindError(f"--host/--port: cannot listen on {host}:{port} ({reason})") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{shown}:{port}"


def configure_logging(debug: bool) -> None:
    """The server's own line per request on stderr; uvicorn's lines only with --debug."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    ours = logging.getLogger("vidcom2.serve")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.DEBUG if debug else logging.INFO)
    ours.propagate = False
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.INFO if debug else logging.WARNING)


def serve_forever(app: Any, sock: socket.socket, graceful_s: float,
                  on_ready: Callable[[], None]) -> None:
    import uvicorn

    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=graceful_s, timeout_keep_alive=30)
    server = uvicorn.Server(config)

    original = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original(sockets=sockets)
        if server.started:
            on_ready()

    server.startup = startup  # type: ignore[method-assign]
    server.run(sockets=[sock])
