"""The server's cache of prefilled prompt prefixes, bounded in bytes (least recently used out).

An entry holds the videos the engine compressed and prefilled together in one batch (one
prefix cache, a row per video); later requests with the same context key (see
``Scheduler.context_key``) are answered on it without decoding or encoding again.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..work import OpenVideos
from .metrics import ServerMetrics


@dataclass
class PrefixEntry:
    """Videos compressed and prefilled together: one prefix cache, one row per video."""

    opened: OpenVideos
    keys: list[str]
    nbytes: int


class PrefixLRU:
    """Prefilled prefixes by context key, bounded in bytes; the least recently used entry
    leaves first (an entry holds the videos prefilled together, and leaves as one)."""

    def __init__(self, max_bytes: int, metrics: ServerMetrics) -> None:
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.entries: OrderedDict[int, PrefixEntry] = OrderedDict()
        self.index: dict[str, tuple[PrefixEntry, int]] = {}
        self.nbytes = 0
        self.lock = threading.Lock()

    def __contains__(self, key: str) -> bool:
        with self.lock:
            return key in self.index

    def get(self, key: str) -> tuple[PrefixEntry, int] | None:
        with self.lock:
            found = self.index.get(key)
            if found is not None:
                self.entries.move_to_end(id(found[0]))
            return found

    def put(self, entry: PrefixEntry) -> bool:
        """Keep ``entry`` (False when it alone is larger than the cache)."""
        if entry.nbytes > self.max_bytes:
            return False
        with self.lock:
            while self.entries and self.nbytes + entry.nbytes > self.max_bytes:
                _, old = self.entries.popitem(last=False)
                self.nbytes -= old.nbytes
                for key in old.keys:
                    if self.index.get(key, (None,))[0] is old:
                        del self.index[key]
            self.entries[id(entry)] = entry
            self.nbytes += entry.nbytes
            for row, key in enumerate(entry.keys):
                self.index[key] = (entry, row)
            self.metrics.prefix_cache_bytes.set(self.nbytes)
            self.metrics.prefix_cache_entries.set(len(self.index))
        return True


def held_bytes(*objects: Any) -> int:
    """Bytes of the tensors and arrays reachable from ``objects`` through this package's and
    transformers' cache objects, dataclasses, lists and dicts (each storage counted once)."""
    seen_storage: set[tuple[int, str]] = set()
    seen: set[int] = set()
    total = 0
    stack = list(objects)
    while stack:
        value = stack.pop()
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            ident = (storage.data_ptr(), str(value.device))
            if ident not in seen_storage:
                seen_storage.add(ident)
                total += storage.nbytes()
        elif isinstance(value, np.ndarray):
            total += value.nbytes
        elif id(value) in seen or isinstance(value, str | bytes | int | float | bool):
            continue
        elif isinstance(value, dict):
            seen.add(id(value))
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            seen.add(id(value))
            stack.extend(value)
        elif type(value).__module__.startswith(("vidcom2_cli", "transformers.cache_utils",
                                                 "transformers.modeling_outputs")) or (
                dataclasses.is_dataclass(value)):
            seen.add(id(value))
            stack.extend(vars(value).values() if hasattr(value, "__dict__") else [])
    return total
