"""The HTTP routes: OpenAI's chat completions and models, health and Prometheus metrics.

Starlette on uvicorn: the ASGI layer FastAPI is built on, without FastAPI's pydantic
validation, because every refusal here must be OpenAI's JSON error naming the field, which
``protocol`` writes. Ray Serve takes the same ASGI app (``ray.py``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..engine import Engine
from ..errors import InputError
from . import EXTRA_FIELD, protocol, wire
from .media import LocalVideo, MediaRules, TemporaryFiles, resolve_video
from .metrics import CONTENT_TYPE, ServerMetrics
from .protocol import APIError, ChatRequest, ServeDefaults
from .scheduler import Cancelled, JobResult, Scheduler, timed_out
from .streams import Streams, stream_name

log = logging.getLogger("vidcom2.serve")
ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Any]],
                    Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]
_OUTCOMES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
             405: "bad_request", 413: "too_large", 503: "unavailable", 504: "timeout"}


@dataclass(frozen=True)
class ServerSettings:
    served_model: str
    defaults: ServeDefaults = field(default_factory=ServeDefaults)
    media: MediaRules = field(default_factory=lambda: MediaRules(Path.cwd().resolve()))
    api_key: str | None = None
    max_body_bytes: int = 768 * 2**20  # a data URL of 512 MiB is about 683 MiB of base64
    request_timeout_s: float = 600.0
    max_batch: int = 8
    max_queue: int = 64
    batch_wait_s: float = 0.005
    prefix_cache_bytes: int = 1 << 30
    prepare_workers: int = 2


@dataclass
class Server:
    """What the routes share: the engine behind its scheduler, the metrics, the uploads."""

    engine: Engine
    settings: ServerSettings
    metrics: ServerMetrics
    scheduler: Scheduler
    files: TemporaryFiles
    streams: Streams | None = None




def build_app(engine: Engine, settings: ServerSettings, streams: Streams | None = None
              ) -> RequestLog:
    """The server's ASGI app (its lifespan starts and stops the engine thread, and the
    chunkers of ``streams``, attached to ``engine``)."""
    metrics = ServerMetrics()
    scheduler = Scheduler(engine, metrics, settings.max_batch, settings.max_queue,
                          settings.batch_wait_s, settings.prefix_cache_bytes,
                          settings.prepare_workers,
                          None if streams is None else streams.engine_lock)
    server = Server(engine, settings, metrics, scheduler, TemporaryFiles(), streams)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        scheduler.start()
        if streams is not None:
            streams.start()
        try:
            yield
        finally:  # uvicorn has finished the requests in flight (SIGTERM drains)
            if streams is not None:
                await run_in_threadpool(streams.stop)
            await run_in_threadpool(scheduler.stop)
            server.files.clear()

    async def chat(request: Request) -> Response:
        try:
            return await chat_completions(server, request)
        except (APIError, Cancelled):
            raise
        except Exception as error:  # a bug: one JSON error, no traceback to the client
            log.error("internal error: %s: %s", type(error).__name__, error,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            raise APIError(500, f"internal error: {type(error).__name__}",
                           code="internal_error") from None

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_card(settings.served_model)]})

    async def model(request: Request) -> Response:
        if request.path_params["name"] != settings.served_model:
            raise APIError(404, f"model: {request.path_params['name']!r} is not served here",
                           "model", "model_not_found")
        return JSONResponse(model_card(settings.served_model))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": settings.served_model,
                             "queue": scheduler.waiting})

    async def metrics_text(request: Request) -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE)

    async def stream_list(request: Request) -> Response:
        held = [] if streams is None else [stream.state()
                                           for stream in streams.streams.values()]
        return JSONResponse({"object": "list", "data": held})

    routes = [Route("/v1/chat/completions", chat, methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/v1/models/{name:path}", model, methods=["GET"]),
              Route("/health", health, methods=["GET"]),
              Route("/metrics", metrics_text, methods=["GET"]),
              Route("/v1/streams", stream_list, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        APIError: api_error, HTTPException: http_error, Cancelled: cancelled})
    logged = RequestLog(Authorization(app, settings.api_key), metrics)
    logged.server = server  # for an embedding program (and the tests): its scheduler, metrics
    return logged


def model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "vidcom2"}


# --- chat completions ------------------------------------------------------------------------

async def chat_completions(server: Server, request: Request) -> Response:
    settings, engine = server.settings, server.engine
    body = protocol.parse_body(await read_body(request, settings.max_body_bytes))
    chat = protocol.parse_chat_request(body, settings.served_model, settings.defaults,
                                       engine.adapter.compression_profile)
    try:
        engine.accept(chat.compression)  # the vision signals its method reads
    except InputError as error:
        raise protocol.from_input_error(error) from None
    name = stream_name(chat.video_url)
    if name is not None:
        return await _stream_answer(server, request, chat, name)
    deadline = time.monotonic() + settings.request_timeout_s
    video = await run_in_threadpool(resolve_video, chat.video_url, chat.video_param,
                                    settings.media, server.files)
    request.scope.setdefault("state", {})["vidcom2"] = {}
    try:
        if chat.stream:
            return await _stream(server, request, chat, video, deadline)
        job = await server.scheduler.submit(chat, video, deadline)
        result = await _wait(job, request, deadline)
    except BaseException:
        server.files.release(video)
        raise
    server.files.release(video)
    fields = _fields(server, request, chat, video, result)
    reason = protocol.finish_reason(fields["tokens"]["generated"],
                                    chat.generation.max_new_tokens)
    return JSONResponse(protocol.completion(protocol.completion_id(), protocol.now(),
                                            chat.model, result.answer.answer, reason, fields))


async def _stream_answer(server: Server, request: Request, chat: ChatRequest, name: str
                         ) -> Response:
    """A question about what a watched stream holds now (``stream://NAME``)."""
    if server.streams is None:
        raise APIError(404, f"{chat.video_param}: no stream {name!r} is watched here (this "
                       "server watches none)", chat.video_param, "stream_not_found")
    stream = server.streams.get(name, chat.video_param)
    protocol.check_stream_request(chat, server.settings.defaults)
    answer, fields = await run_in_threadpool(server.streams.ask, stream,
                                             str(chat.question), chat.generation)
    request.scope.setdefault("state", {})["vidcom2"] = {
        "prompt": answer.prompt_tokens, "completion": answer.generated, "batch": 1,
        "prefix": "stream"}
    reason = protocol.finish_reason(answer.generated, chat.generation.max_new_tokens)
    return JSONResponse(protocol.completion(protocol.completion_id(), protocol.now(),
                                            chat.model, answer.answer, reason, fields))


async def _wait(job: Any, request: Request, deadline: float) -> JobResult:
    """The job's result; a client that goes away cancels it."""
    waiting = asyncio.wrap_future(job.future)
    try:
        while True:
            left = deadline - time.monotonic() + 5.0  # the engine ends it first if it can
            done, _ = await asyncio.wait({waiting}, timeout=min(0.5, max(left, 0.0)))
            if done:
                return waiting.result()
            if left <= 0:
                raise timed_out()
            if await request.is_disconnected():
                raise Cancelled()
    finally:
        if not waiting.done():
            job.cancelled.set()


def _fields(server: Server, request: Request, chat: ChatRequest, video: LocalVideo,
            result: JobResult) -> dict[str, Any]:
    fields = wire.answer_fields(result.answer, video.label, chat.sampling, {
        "queue_ms": round(result.queue_s * 1000.0, 3), "batch_size": result.batch_size,
        "prefix_cache": "hit" if result.prefix_cached else "miss", "process": os.getpid()})
    server.metrics.answered(fields, result.queue_s)
    request.scope["state"]["vidcom2"] = {
        "prompt": fields["tokens"]["prompt_kept"], "completion": fields["tokens"]["generated"],
        "batch": result.batch_size, "prefix": "hit" if result.prefix_cached else "miss"}
    return fields


async def _stream(server: Server, request: Request, chat: ChatRequest, video: LocalVideo,
                  deadline: float) -> Response:
    """Server-sent events as OpenAI sends them: a role chunk, content chunks as the text is
    generated, a closing chunk with the finish reason (and the ``vidcom2`` field), a usage
    chunk when asked for, then ``data: [DONE]``. Admission errors are still HTTP errors; a
    failure after the stream began is an ``error`` event."""
    loop = asyncio.get_running_loop()
    texts: asyncio.Queue[str] = asyncio.Queue()
    job = await server.scheduler.submit(
        chat, video, deadline, lambda text: loop.call_soon_threadsafe(texts.put_nowait, text))
    ident, created = protocol.completion_id(), protocol.now()

    def event(payload: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

    async def events() -> AsyncIterator[bytes]:
        waiting = asyncio.wrap_future(job.future)
        finished = False
        sent, held = [], ""  # trailing whitespace waits: the answer ends stripped
        try:
            yield event(protocol.chunk(ident, created, chat.model,
                                       {"role": "assistant", "content": ""},
                                       include_usage=chat.include_usage))
            while not waiting.done() or not texts.empty():
                if texts.empty():
                    getter = asyncio.ensure_future(texts.get())
                    left = deadline - time.monotonic() + 5.0
                    await asyncio.wait({getter, waiting}, timeout=max(left, 0.0),
                                       return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        if not waiting.done():
                            raise timed_out()
                        continue
                    text = getter.result()
                else:
                    text = texts.get_nowait()
                text, held = _hold_trailing_space(held + text)
                if text:
                    sent.append(text)
                    yield event(protocol.chunk(ident, created, chat.model, {"content": text},
                                               include_usage=chat.include_usage))
            try:
                result = waiting.result()
            except APIError as error:
                request.scope["state"]["outcome"] = error.status
                yield event(error.body())
                yield b"data: [DONE]\n\n"
                finished = True
                return
            fields = _fields(server, request, chat, video, result)
            missing = result.answer.answer.removeprefix("".join(sent))
            if missing and "".join(sent) + missing == result.answer.answer:  # not streamed
                yield event(protocol.chunk(ident, created, chat.model, {"content": missing},
                                           include_usage=chat.include_usage))
            reason = protocol.finish_reason(fields["tokens"]["generated"],
                                            chat.generation.max_new_tokens)
            yield event(protocol.chunk(ident, created, chat.model, {}, reason,
                                       chat.include_usage, fields))
            if chat.include_usage:
                yield event(protocol.usage_chunk(ident, created, chat.model, fields["tokens"]))
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            if not finished:  # the client went away (or the server stops): stop generating
                job.cancelled.set()
                request.scope["state"]["outcome"] = 499
            server.files.release(video)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _hold_trailing_space(text: str) -> tuple[str, str]:
    """``text`` split before its trailing whitespace, which is sent only if more text
    follows (streamed deltas then add up to the answer, which ends stripped)."""
    kept = text.rstrip()
    return kept, text[len(kept):]


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past ``limit`` bytes (declared or received). A body up to
    ``DRAIN_BYTES`` too large is read to its end first, so that the client, still sending,
    gets the error rather than a broken pipe."""
    declared = request.headers.get("content-length")
    too_large = declared is not None and declared.isdigit() and int(declared) > limit
    if too_large and int(declared) > limit + DRAIN_BYTES:
        raise _body_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit + DRAIN_BYTES:
                break
            if size > limit:
                too_large = True
                chunks.clear()
            elif not too_large:
                chunks.append(chunk)
    except ClientDisconnect:
        raise Cancelled() from None
    if too_large:
        raise _body_too_large(limit)
    return b"".join(chunks)


DRAIN_BYTES = 64 * 2**20


def _body_too_large(limit: int) -> APIError:
    return APIError(413, f"body: more than the server's limit of {limit:,} bytes",
                    code="body_too_large")


# --- errors, authorization, the request log --------------------------------------------------

async def api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, APIError)
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    reason = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on "
              f"{request.url.path}"}.get(error.status_code, str(error.detail))
    return await api_error(request, APIError(error.status_code, reason,
                                             code="not_found" if error.status_code == 404
                                             else None))


async def cancelled(request: Request, error: Exception) -> Response:
    """The client went away: nobody reads this (499, nginx's "client closed request")."""
    return Response(status_code=499)


class Authorization:
    """``Authorization: Bearer KEY`` on every route but /health, when a key is set."""

    def __init__(self, app: ASGIApp, key: str | None) -> None:
        self.app = app
        self.key = key

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                              self.key.encode()):
            await self.app(scope, receive, send)
            return
        problem = "wrong API key" if given else "missing API key (Authorization: Bearer KEY)"
        error = APIError(401, f"authorization: {problem}", code="invalid_api_key",
                         headers={"WWW-Authenticate": "Bearer"})
        await JSONResponse(error.body(), status_code=401, headers=error.headers)(
            scope, receive, send)


class RequestLog:
    """One log line per request once its response is complete (a stream: at its end), and
    the requests counter by outcome for chat completions."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self.server: Server | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        chat = scope["path"] == "/v1/chat/completions"
        if chat:
            self.metrics.in_flight.inc()

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            state = scope.get("state", {})
            final = state.get("outcome", status) or 499
            if chat:
                self.metrics.in_flight.dec()
                self.metrics.requests.labels(outcome_name(final)).inc()
            extra = state.get("vidcom2") or {}
            details = " ".join(f"{key}={value}" for key, value in extra.items())
            client = scope.get("client") or ("-", 0)
            log.info("%s %s %s %d %.0f ms%s", client[0], scope["method"], scope["path"],
                     final, (time.perf_counter() - start) * 1000.0,
                     f" {details}" if details else "")


def outcome_name(status: int) -> str:
    if status == 200:
        return "ok"
    if status == 499:
        return "cancelled"
    return _OUTCOMES.get(status, "error" if status >= 500 else "bad_request")


__all__ = ["EXTRA_FIELD", "ServerSettings", "build_app"]
