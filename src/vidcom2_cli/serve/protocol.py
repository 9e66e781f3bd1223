"""The OpenAI chat-completions schema as this server reads and writes it.

A request is checked field by field before anything is queued: every refusal is an
``APIError`` whose message starts with the field it is about (``messages[0].content[1]``,
``max_tokens``, ``vidcom2.ratio``) and becomes an OpenAI-style JSON error body. Videos come as
``video_url`` content parts, the way vLLM takes them; vidcom2's own settings (ratio, method,
frames...) come in the ``vidcom2`` field, which the official client sends as ``extra_body``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from ..errors import InputError
from ..models.conversation import Conversation, Message
from ..options import (
    CompressionOptions,
    GenerationOptions,
    SamplingOptions,
    check_compression,
    check_sampling,
)
from . import EXTRA_FIELD

# OpenAI's error types by status (the "type" field of an error body).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "invalid_request_error",
               429: "rate_limit_error", 503: "service_unavailable", 504: "timeout"}
_SYSTEM_ROLES = {"system": "system", "developer": "system"}
# What the vidcom2 field may hold, each with the engine option it sets.
EXTRA_KEYS = ("ratio", "method", "method_options", "frames", "fps", "max_frames", "min_pixels",
              "max_pixels")
# Option names in the engine's messages, as the request fields that set them.
# Longer names first: "--method-option" before "--method".
FIELD_NAMES = {
    "--frames/--fps/--max-frames": f"{EXTRA_FIELD}.frames/fps/max_frames",
    "--min-pixels/--max-pixels": f"{EXTRA_FIELD}.min_pixels/max_pixels",
    "--method-option": f"{EXTRA_FIELD}.method_options", "--method": f"{EXTRA_FIELD}.method",
    "--ratio": f"{EXTRA_FIELD}.ratio", "--min-pixels": f"{EXTRA_FIELD}.min_pixels",
    "--max-pixels": f"{EXTRA_FIELD}.max_pixels", "--max-new-tokens": "max_tokens",
    "--frames": f"{EXTRA_FIELD}.frames", "--fps": f"{EXTRA_FIELD}.fps"}


class APIError(Exception):
    """A request the server refuses: HTTP ``status``, a one-line message naming the field
    (``param``), and OpenAI's ``code`` where it has one."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(
            self.status, "server_error" if self.status >= 500 else "invalid_request_error"),
            "param": self.param, "code": self.code}}


def bad_request(param: str, problem: str, code: str | None = None) -> APIError:
    return APIError(400, f"{param}: {problem}", param, code)


def from_input_error(error: Exception, video_path: str | None = None,
                     video_param: str | None = None) -> APIError:
    """An engine InputError (or VideoError) as a 400 naming the request field: the command
    line's option names become field names, and the server's own path of the video becomes the
    field that gave it (a data URL's temporary file means nothing to the client)."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if video_path and video_param:
        message = message.replace(video_path, video_param)
    param = video_param if video_param and message.startswith(video_param) else None
    for option, field in FIELD_NAMES.items():
        if message.startswith(option + ":"):
            message, param = field + message[len(option):], field
            break
    if message.startswith("question:"):
        message, param = "messages" + message[len("question"):], "messages"
    code = None
    if "context is" in message and "tokens" in message:  # Engine._check_context's refusal
        param, code = "max_tokens", "context_length_exceeded"
        if video_param and message.startswith(video_param + ": "):
            message = message[len(video_param) + 2:]
        message = f"max_tokens: {message}"
    for option, field in FIELD_NAMES.items():  # the advice at the end of a message too
        message = message.replace(option, field)
    return APIError(400, message, param, code)


@dataclass(frozen=True)
class ServeDefaults:
    """What a request leaves out: the serve command's own options."""

    sampling: SamplingOptions = dataclasses.field(default_factory=SamplingOptions)
    compression: CompressionOptions = dataclasses.field(default_factory=CompressionOptions)
    generation: GenerationOptions = dataclasses.field(default_factory=GenerationOptions)


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat-completions request."""

    model: str
    video_url: str
    video_param: str  # where the video is in the request, for error messages
    question: Conversation
    sampling: SamplingOptions
    compression: CompressionOptions
    generation: GenerationOptions
    stream: bool = False
    include_usage: bool = False


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise APIError(400, f"body: not valid JSON ({str(error).splitlines()[0]})",
                       code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, f"body: expected a JSON object, got {_json_type(body)}",
                       code="invalid_json")
    return body


def parse_chat_request(body: dict[str, Any], served_model: str, defaults: ServeDefaults,
                       profile: str | None = None) -> ChatRequest:
    """Check every field this server reads (``profile``: the served model's compression
    profile, for method options); APIError names the first one that is wrong."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model", "missing, or not a non-empty string")
    if model != served_model:
        raise APIError(404, f"model: {model!r} is not served here; this server serves "
                       f"{served_model!r} (see GET /v1/models)", "model", "model_not_found")
    _refuse_unsupported(body)
    video_url, video_param, question = parse_messages(body.get("messages"))
    sampling, compression = _extra_settings(body.get(EXTRA_FIELD), defaults, profile)
    generation, selection_seed = _generation(body, defaults.generation)
    if selection_seed is not None:
        compression = replace(compression, seed=selection_seed)
    stream = _optional(body, "stream", bool, False)
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise bad_request("stream_options", "only allowed when stream is true")
        if not isinstance(options, dict):
            raise bad_request("stream_options", "expected an object")
        include_usage = _optional(options, "include_usage", bool, False,
                                  "stream_options.include_usage")
    return ChatRequest(model, video_url, video_param, question, sampling, compression,
                       generation, stream, include_usage)


def parse_messages(messages: Any) -> tuple[str, str, Conversation]:
    """The video URL, where it is, and the conversation around it."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages", "missing, or not a non-empty list")
    parsed: list[tuple[str, str, str | None, str | None]] = []  # role, text, video, its param
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request(where, f"expected an object, got {_json_type(message)}")
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise bad_request(f"{where}.role", f"{role!r} is not one of system, developer, "
                              "user, assistant")
        text, video, video_param = _content(message.get("content"), f"{where}.content",
                                            role == "user")
        parsed.append((_SYSTEM_ROLES.get(role, role), text, video, video_param))
    videos = [(index, param) for index, (_, _, video, param) in enumerate(parsed)
              if video is not None]
    if not videos:
        raise bad_request("messages", 'no video: add a content part {"type": "video_url", '
                          '"video_url": {"url": ...}} to a user message', "missing_video")
    if parsed[-1][0] != "user":
        raise bad_request(f"messages[{len(parsed) - 1}].role", "the last message must be the "
                          "user's (the question to answer)")
    at = videos[0][0]
    role, text, video, video_param = parsed[at]
    if at == len(parsed) - 1 and not text.strip():
        raise bad_request(f"messages[{at}].content", "no question: add a text part after "
                          "the video", "missing_question")
    if parsed[-1][1].strip() == "":
        raise bad_request(f"messages[{len(parsed) - 1}].content", "the question is empty")
    before = [Message(role, text) for role, text, _, _ in parsed[:at]]
    after = [Message(role, text) for role, text, _, _ in parsed[at + 1:]]
    assert video is not None and video_param is not None
    return video, video_param, Conversation(before, text, after)


def _content(content: Any, where: str, user: bool) -> tuple[str, str | None, str | None]:
    """A message's text (its text parts joined by newlines) and its video URL, if any."""
    if isinstance(content, str):
        return content, None, None
    if not isinstance(content, list):
        raise bad_request(where, f"expected a string or a list of parts, got "
                          f"{_json_type(content)}")
    texts: list[str] = []
    video: str | None = None
    video_param: str | None = None
    for index, part in enumerate(content):
        at = f"{where}[{index}]"
        if not isinstance(part, dict):
            raise bad_request(at, f"expected an object, got {_json_type(part)}")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request(f"{at}.text", "missing, or not a string")
            texts.append(text)
        elif kind == "video_url":
            if not user:
                raise bad_request(at, "a video can only be in a user message")
            holder = part.get("video_url")
            url = holder.get("url") if isinstance(holder, dict) else None
            if not isinstance(url, str) or not url:
                raise bad_request(f"{at}.video_url.url", "missing, or not a non-empty string")
            if video is not None:
                raise bad_request(at, "a second video: the model answers about one video per "
                                  "request", "too_many_videos")
            video, video_param = url, f"{at}.video_url.url"
        elif kind in ("image_url", "input_image", "image"):
            raise bad_request(at, "images are not taken: send a video_url part (one video per "
                              "request)", "unsupported_content")
        else:
            raise bad_request(f"{at}.type", f"{kind!r} is not a content part this server "
                              "takes (text, video_url)", "unsupported_content")
    return "\n".join(texts), video, video_param


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """Fields whose meaning this server does not implement are refused when they ask for
    something (not silently ignored); their neutral values pass."""
    n = body.get("n")
    if n is not None and n != 1:
        raise bad_request("n", "only 1 choice per request is generated")
    for field in ("logprobs", "parallel_tool_calls"):
        if body.get(field):
            raise bad_request(field, "not supported by this server")
    for field in ("tools", "functions", "stop", "logit_bias"):
        if body.get(field):
            raise bad_request(field, "not supported by this server")
    if body.get("top_logprobs"):
        raise bad_request("top_logprobs", "not supported by this server")
    for field in ("presence_penalty", "frequency_penalty"):
        value = body.get(field)
        if value not in (None, 0, 0.0):
            raise bad_request(field, "not supported by this server (only 0)")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise bad_request("response_format", 'only {"type": "text"} is supported')


def _generation(body: dict[str, Any], default: GenerationOptions
                ) -> tuple[GenerationOptions, int | None]:
    """The generation options, and the request's seed (also the selection seed, as ask's
    --seed is)."""
    tokens = default.max_new_tokens
    for field in ("max_tokens", "max_completion_tokens"):  # the newer name wins
        value = body.get(field)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise bad_request(field, f"must be an integer of at least 1, got {value!r}")
        tokens = value
    temperature = body.get("temperature")
    if temperature is not None and not (_is_number(temperature) and 0 <= temperature <= 2):
        raise bad_request("temperature", f"must be a number from 0 to 2, got {temperature!r}")
    top_p = body.get("top_p")
    if top_p is not None and not (_is_number(top_p) and 0 < top_p <= 1):
        raise bad_request("top_p", f"must be a number in (0, 1], got {top_p!r}")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise bad_request("seed", f"must be an integer, got {seed!r}")
    if temperature is None:  # the server's own default: greedy unless serve --sample
        sample, temperature = default.do_sample, default.temperature
    else:
        sample = temperature > 0
    generation = GenerationOptions(
        max_new_tokens=tokens, do_sample=sample, temperature=temperature if sample else None,
        top_p=(default.top_p if top_p is None else top_p) if sample else None,
        seed=default.seed if seed is None else seed)
    return generation, seed


def _extra_settings(extra: Any, defaults: ServeDefaults, profile: str | None
                    ) -> tuple[SamplingOptions, CompressionOptions]:
    sampling, compression = defaults.sampling, defaults.compression
    if extra is None:
        return sampling, compression
    if not isinstance(extra, dict):
        raise bad_request(EXTRA_FIELD, f"expected an object, got {_json_type(extra)}")
    for key in extra:
        if key not in EXTRA_KEYS:
            raise bad_request(f"{EXTRA_FIELD}.{key}", f"unknown setting; the settings are "
                              f"{', '.join(EXTRA_KEYS)}")
    values: dict[str, Any] = {}
    for key in ("frames", "max_frames", "min_pixels", "max_pixels"):
        if extra.get(key) is not None:
            if not _is_int(extra[key]):
                raise bad_request(f"{EXTRA_FIELD}.{key}", f"must be an integer, got "
                                  f"{extra[key]!r}")
            values[key] = extra[key]
    for key in ("ratio", "fps"):
        if extra.get(key) is not None:
            if not _is_number(extra[key]):
                raise bad_request(f"{EXTRA_FIELD}.{key}", f"must be a number, got "
                                  f"{extra[key]!r}")
            values[key] = float(extra[key])
    if extra.get("method") is not None:
        if not isinstance(extra["method"], str):
            raise bad_request(f"{EXTRA_FIELD}.method", "must be a string")
        values["method"] = extra["method"]
    options = extra.get("method_options")
    if options is not None:
        if not isinstance(options, dict) or not all(
                isinstance(name, str) and _is_number(value) for name, value in options.items()):
            raise bad_request(f"{EXTRA_FIELD}.method_options", 'expected an object of numbers, '
                              'e.g. {"tau": 0.8}')
        values["method_options"] = tuple((name, float(value)) for name, value in options.items())
    if "frames" in values and "fps" not in values:
        sampling = replace(sampling, fps=None)
    sampling = replace(sampling, **{key: values[key] for key in
                                    ("frames", "fps", "max_frames", "min_pixels", "max_pixels")
                                    if key in values})
    changed = {key: values[key] for key in ("ratio", "method", "method_options")
               if key in values}
    if "method" in changed and "method_options" not in changed:
        changed["method_options"] = ()  # the server's options were for its own method
    compression = replace(compression, **changed)
    try:
        check_sampling(sampling)
        check_compression(compression, profile)
    except InputError as error:
        raise from_input_error(error) from None
    return sampling, compression


def _optional(holder: dict[str, Any], key: str, kind: type, default: Any,
              name: str | None = None) -> Any:
    value = holder.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise bad_request(name or key, f"expected a {kind.__name__}, got {_json_type(value)}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# --- responses -------------------------------------------------------------------------------

def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(tokens: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's usage from an answer's token counts: the prompt as the language model read it
    (after compression), the generated tokens, and the prompt tokens served from a cached
    prefix."""
    prompt, completion = tokens["prompt_kept"], tokens["generated"]
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": tokens["prefix_reused"]}}


def finish_reason(generated: int, max_tokens: int) -> str:
    return "length" if generated >= max_tokens else "stop"


def completion(ident: str, created: int, model: str, text: str, reason: str,
               fields: dict[str, Any]) -> dict[str, Any]:
    return {"id": ident, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                                 "refusal": None},
                         "logprobs": None, "finish_reason": reason}],
            "usage": usage(fields["tokens"]), "system_fingerprint": None,
            EXTRA_FIELD: fields}


def chunk(ident: str, created: int, model: str, delta: dict[str, Any],
          reason: str | None = None, include_usage: bool = False,
          fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk`` (the last one with content carries ``vidcom2``)."""
    body: dict[str, Any] = {
        "id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}
    if include_usage:
        body["usage"] = None
    if fields is not None:
        body[EXTRA_FIELD] = fields
    return body


def usage_chunk(ident: str, created: int, model: str, tokens: dict[str, Any]) -> dict[str, Any]:
    return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None, "choices": [], "usage": usage(tokens)}


def now() -> int:
    return int(time.time())


def check_stream_request(chat: ChatRequest, defaults: ServeDefaults) -> None:
    """What a question about a watched stream (``stream://NAME``) cannot ask: the stream was
    sampled and compressed as the server started it, it is answered whole (no server-sent
    events), and its question is one user message (the stream's cache holds no other turns)."""
    if chat.stream:
        raise bad_request("stream", "a stream:// video is answered whole; send stream: false")
    if chat.sampling != defaults.sampling:
        raise bad_request(EXTRA_FIELD, "frames, fps and pixel bounds do not apply to a "
                          "stream:// video (the server samples it with --watch-fps)")
    asked, held = chat.compression, defaults.compression
    if (asked.ratio, asked.method, asked.method_options) != (held.ratio, held.method,
                                                             held.method_options):
        raise bad_request(EXTRA_FIELD, "a stream:// video is compressed as the server "
                          "started it (--ratio, --method); leave ratio and method out")
    question = chat.question
    if question.before or question.after:
        raise bad_request("messages", "a question about a stream:// video is one user "
                          "message (the video part and the question's text)")
