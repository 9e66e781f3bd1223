"""An on-disk cache of vision-encoder outputs, so a video is decoded and encoded once.

An entry is one safetensors file named by its key: a hash of the video file's bytes (not its
path or time), the model's fingerprint (reference, config, processor settings, dtype, device
kind) and the sampling options. It holds the encoder output, the processor's token inputs
(no pixels) and which frames were sampled, which is everything a later question, ratio or
method needs. Entries are written to a temporary file and renamed into place, so a killed run
never leaves half an entry under a real name and processes may share a directory; a checksum
over the tensors catches a truncated or altered file, which is reported once, removed and
recomputed. Nothing is written unless a cache directory is given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .models.items import PreparedItem
from .video import VideoInfo

# 2: the probe signal of Qwen-style towers attends to merge units (entries of 1 hold the old one)
FORMAT = "vidcom2-feature-cache/2"
SUFFIX = ".safetensors"
# Only files named as this cache names them are its entries: a folder given by mistake (a
# model's, holding its own *.safetensors weights) loses nothing to `cache clear`.
_ENTRY = re.compile(r"[0-9a-f]{64}\.safetensors")
_TEMPORARY = re.compile(r"\.[0-9a-f]{64}\.\d+\.[0-9a-f]{32}\.tmp")
_CHUNK = 1 << 20


@dataclass
class CachedEncoding:
    """One video's encoder output and what produced it (all on the CPU)."""

    tensors: dict[str, torch.Tensor]  # the adapter's ``output_tensors``
    item: PreparedItem  # the processor's output without pixels
    indices: list[int]
    info: VideoInfo
    padded: int
    substituted: dict[int, int]  # sampled frames that were undecodable -> the ones used
    resized: int = 0  # frames scaled to the common size (a stream that changes size)


@dataclass(frozen=True)
class CacheUsage:
    entries: int
    bytes: int


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """A directory of cached encodings; ``report`` receives a one-line notice when an entry is
    unusable or cannot be written (once per entry), and the run goes on without it."""

    def __init__(self, directory: Path, report: Callable[[str], None] | None = None) -> None:
        self.directory = Path(directory)
        self.report = report
        self._reported: set[str] = set()
        self._digests: dict[tuple[str, int, int], str] = {}

    def key(self, video: Path, fingerprint: str, sampling: str) -> str:
        """The entry name for a video file's content, a model and the sampling options.

        The file is hashed once per process for each (path, size, modification time).
        """
        stat = video.stat()
        identity = (str(video.resolve()), stat.st_size, stat.st_mtime_ns)
        if identity not in self._digests:
            self._digests[identity] = file_digest(video)
        parts = (FORMAT, self._digests[identity], fingerprint, sampling)
        return hashlib.sha256("\x00".join(parts).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}{SUFFIX}"

    def load(self, key: str) -> CachedEncoding | None:
        """The entry for ``key``, or None when there is none or it is unusable (then removed)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with path.open("rb"):  # unreadable now (permissions, NFS hiccup): skip, keep it
                pass
        except OSError:
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
            if metadata.get("format") != FORMAT or metadata.get("key") != key:
                raise ValueError("written for another key or format")
            if metadata.get("checksum") != _checksum(tensors):
                raise ValueError("checksum mismatch")
            video = json.loads(metadata["video"])
            return CachedEncoding(
                tensors={name[4:]: value for name, value in tensors.items()
                         if name.startswith("out/")},
                item=PreparedItem(
                    inputs={name[3:]: value for name, value in tensors.items()
                            if name.startswith("in/")},
                    video_token_mask=tensors["video_token_mask"],
                    positions=tensors["positions"]),
                indices=[int(index) for index in video["indices"]],
                info=VideoInfo(**video["info"]), padded=int(video["padded"]),
                substituted={int(k): int(v) for k, v in video["substituted"].items()},
                resized=int(video.get("resized", 0)))
        except Exception as error:  # a truncated, altered or foreign file: recompute
            self._notice(key, f"feature cache: entry {path.name} is unusable ({error}); "
                              "recomputing it")
            path.unlink(missing_ok=True)
            return None

    def store(self, key: str, entry: CachedEncoding) -> None:
        """Write an entry atomically (a temporary file renamed into place), unless one is
        there already (``load`` removes an unusable one)."""
        if self._path(key).is_file():
            return
        tensors = {f"out/{name}": value for name, value in entry.tensors.items()}
        tensors.update({f"in/{name}": value for name, value in entry.item.inputs.items()})
        tensors["video_token_mask"] = entry.item.video_token_mask
        tensors["positions"] = entry.item.positions
        tensors = {name: value.detach().to("cpu").contiguous().clone()
                   for name, value in tensors.items()}
        metadata = {"format": FORMAT, "key": key, "checksum": _checksum(tensors),
                    "video": json.dumps({"indices": entry.indices, "padded": entry.padded,
                                         "substituted": entry.substituted,
                                         "resized": entry.resized,
                                         "info": dataclasses.asdict(entry.info)})}
        temporary = self.directory / f".{key}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(temporary), metadata=metadata)
            with temporary.open("rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, self._path(key))
        except Exception as error:  # OSError, or safetensors' own error for a failed write
            temporary.unlink(missing_ok=True)
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            self._notice(key, f"feature cache: cannot write to {self.directory} ({reason}); "
                              "going on without it")

    def _files(self, pattern: re.Pattern[str]) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return [path for path in self.directory.iterdir() if pattern.fullmatch(path.name)]

    def usage(self) -> CacheUsage:
        entries = self._files(_ENTRY)
        return CacheUsage(len(entries), sum(entry.stat().st_size for entry in entries))

    def clear(self) -> CacheUsage:
        """Remove every entry (and temporary files left by killed runs), and nothing else;
        returns what was removed."""
        removed = self.usage()
        for path in [*self._files(_ENTRY), *self._files(_TEMPORARY)]:
            path.unlink(missing_ok=True)
        return removed

    def _notice(self, key: str, message: str) -> None:
        if key not in self._reported:
            self._reported.add(key)
            if self.report is not None:
                self.report(message)
