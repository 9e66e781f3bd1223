"""A request's video URL as a local file, under the server's rules.

- a path or a ``file://`` URL: read only under the media root, after resolving it (``..`` and
  symbolic links followed) so that nothing outside can be reached;
- a ``data:video/...;base64,`` URL: decoded (size-limited) into a temporary file;
- ``http(s)://``: refused unless remote media are allowed, then downloaded with a size and a
  time limit into a temporary file.

A temporary file is named by its content's hash, so the same upload twice is one file, and is
removed when the last request using it is done.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .protocol import APIError, bad_request

_CHUNK = 1 << 20
_DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(;[^;,]*)*),", re.IGNORECASE)


@dataclass(frozen=True)
class MediaRules:
    root: Path  # resolved
    allow_remote: bool = False
    max_bytes: int = 512 * 2**20  # a data URL's decoded size, and a download's
    download_timeout_s: float = 60.0


@dataclass
class LocalVideo:
    """A video the engine can open, and whether it is a temporary copy."""

    path: Path
    label: str  # what the answer reports as its video: the URL as sent (a data URL shortened)
    temporary: bool = False


@dataclass
class TemporaryFiles:
    """Uploaded and downloaded videos, shared by the requests that sent the same bytes."""

    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vidcom2-")))
    users: Counter[Path] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def store(self, data: bytes, suffix: str) -> Path:
        path = self.directory / f"{hashlib.sha256(data).hexdigest()}{suffix}"
        with self.lock:
            if not path.exists():
                partial = path.with_name(path.name + ".part")
                partial.write_bytes(data)
                partial.replace(path)
            self.users[path] += 1
        return path

    def adopt(self, path: Path) -> None:
        with self.lock:
            self.users[path] += 1

    def release(self, video: LocalVideo) -> None:
        if not video.temporary:
            return
        with self.lock:
            self.users[video.path] -= 1
            if self.users[video.path] <= 0:
                del self.users[video.path]
                video.path.unlink(missing_ok=True)

    def clear(self) -> None:
        for path in self.directory.glob("*"):
            path.unlink(missing_ok=True)
        self.directory.rmdir()


def resolve_video(url: str, param: str, rules: MediaRules, files: TemporaryFiles
                  ) -> LocalVideo:
    """The local file of a request's video URL (APIError naming ``param`` when refused)."""
    lowered = url[:16].lower()
    if lowered.startswith("data:"):
        data, suffix = _decode_data_url(url, param, rules.max_bytes)
        size = f"{len(data):,} bytes"
        return LocalVideo(files.store(data, suffix), f"{url[:url.index(',')]},... ({size})",
                          temporary=True)
    if lowered.startswith(("http://", "https://")):
        if not rules.allow_remote:
            raise APIError(403, f"{param}: remote URLs are not read by this server; send the "
                           "video as a data: URL or a path under its media root, or start it "
                           "with --allow-remote-media", param, "remote_media_disabled")
        return LocalVideo(_download(url, param, rules, files), url, temporary=True)
    if lowered.startswith("file:"):
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise bad_request(param, f"a file URL on another host ({parsed.netloc}) cannot be "
                              "read")
        return LocalVideo(_under_root(urllib.parse.unquote(parsed.path), param, rules), url)
    if re.match(r"^[a-z][a-z0-9+.-]*://", lowered):
        raise bad_request(param, "unsupported URL scheme; use a path, file://, data: or "
                          "http(s)://", "unsupported_url")
    return LocalVideo(_under_root(url, param, rules), url)


def _under_root(path: str, param: str, rules: MediaRules) -> Path:
    """``path`` (relative ones from the media root) resolved, with every link followed, and
    inside the media root."""
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = rules.root / candidate
    resolved = Path(os.path.realpath(candidate))
    if not resolved.is_relative_to(rules.root):
        raise APIError(403, f"{param}: {path} is outside the server's media root "
                       f"({rules.root}); only files under it are read", param,
                       "media_outside_root")
    if not resolved.exists():
        raise bad_request(param, f"{path}: no such file under the media root", "video_not_found")
    if not resolved.is_file():
        raise bad_request(param, f"{path}: not a regular file", "video_unreadable")
    if not os.access(resolved, os.R_OK):
        raise bad_request(param, f"{path}: cannot be read (permission denied)",
                          "video_unreadable")
    return resolved


def _decode_data_url(url: str, param: str, max_bytes: int) -> tuple[bytes, str]:
    match = _DATA_URL.match(url)
    if match is None:
        raise bad_request(param, "a data URL must look like data:video/mp4;base64,<data>",
                          "invalid_data_url")
    media_type = match["type"].lower()
    if ";base64" not in match["params"].lower():
        raise bad_request(param, "a data URL must be base64-encoded (data:video/...;base64,...)",
                          "invalid_data_url")
    if media_type and not media_type.startswith(("video/", "image/gif", "image/webp",
                                                 "application/octet-stream")):
        raise bad_request(param, f"a data URL of type {media_type} is not a video",
                          "invalid_data_url")
    encoded = url[match.end():]
    if len(encoded) * 3 // 4 > max_bytes:
        raise APIError(413, f"{param}: the data URL holds more than the server's limit of "
                       f"{max_bytes // 2**20} MiB", param, "media_too_large")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(param, "the data URL's base64 cannot be decoded",
                          "invalid_data_url") from None
    if not data:
        raise bad_request(param, "the data URL is empty", "invalid_data_url")
    subtype = media_type.partition("/")[2]
    suffix = "." + re.sub(r"[^a-z0-9]", "", subtype.split("+")[0])[:8] if subtype else ".bin"
    return data, suffix if suffix != "." else ".bin"


def _download(url: str, param: str, rules: MediaRules, files: TemporaryFiles) -> Path:
    """The remote video in a temporary file, read in chunks up to the size limit and within
    the time limit (the whole download, not one read)."""
    deadline = time.monotonic() + rules.download_timeout_s
    digest = hashlib.sha256()
    partial = files.directory / f"download-{os.getpid()}-{threading.get_ident()}.part"
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "vidcom2-serve"})
        with urllib.request.urlopen(request, timeout=rules.download_timeout_s) as response, \
                partial.open("wb") as out:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > rules.max_bytes:
                raise _too_large(param, rules)
            size = 0
            while chunk := response.read(_CHUNK):
                size += len(chunk)
                if size > rules.max_bytes:
                    raise _too_large(param, rules)
                if time.monotonic() > deadline:
                    raise bad_request(param, f"the download took longer than "
                                      f"{rules.download_timeout_s:g} s", "download_timeout")
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise bad_request(param, "the download is empty", "video_unreadable")
    except APIError:
        partial.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, ValueError) as error:
        partial.unlink(missing_ok=True)
        reason = getattr(error, "reason", None) or error
        raise bad_request(param, f"cannot download {url} ({reason})",
                          "download_failed") from None
    suffix = Path(urllib.parse.urlparse(url).path).suffix[:8] or ".bin"
    path = files.directory / f"{digest.hexdigest()}{suffix}"
    with files.lock:
        partial.replace(path)
    files.adopt(path)
    return path


def _too_large(param: str, rules: MediaRules) -> APIError:
    return APIError(413, f"{param}: the download is larger than the server's limit of "
                    f"{rules.max_bytes // 2**20} MiB", param, "media_too_large")
