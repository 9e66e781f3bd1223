"""Whether a model's weights fit where it is loaded, asked before loading.

Loading a model that does not fit ends, after half a minute, in an allocator's message (or the
kernel's OOM killer). The weights' size is known beforehand: the parameter count (from the
safetensors headers of a checkpoint, or stored with a random-weight preset) times the bytes of
the dtype they are loaded in. It is compared with what the device has free: on a CPU
/proc/meminfo's MemAvailable (and the cgroup's limit, in a container), on a GPU
``torch.cuda.mem_get_info``. Activations, the KV cache and the vision encoder's work need more
on top, so passing this check does not promise a run; failing it promises a failure.

Nothing is refused when a number is unknown (another OS, a quantized checkpoint, a hub model
whose sizes cannot be read), with ``--device-map`` (which may spread or offload), or with
``VIDCOM2_NO_MEMORY_CHECK=1``.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelLoadError

GIB = 1024**3
SKIP_VARIABLE = "VIDCOM2_NO_MEMORY_CHECK"
_HEADER_LIMIT = 100 * 1024**2  # a safetensors header is a few hundred kilobytes at most
_CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # v2
                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes",  # v1
                  "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


class NotEnoughMemory(ModelLoadError):
    """The model's weights alone need more memory than its device has free."""


@dataclass(frozen=True)
class Room:
    """Free memory on the device a model is loaded on."""

    place: str  # as the message names it: "the CPU", "GPU cuda:0"
    available: int  # bytes


# --- what the weights need ---------------------------------------------------------------------


FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})


def safetensors_counts(path: Path) -> dict[str, int]:
    """Values stored in one .safetensors file per dtype ("BF16", "F32", ...), from its header
    alone."""
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > _HEADER_LIMIT:
            raise ValueError(f"{path.name}: a {length}-byte header is not a safetensors header")
        header = json.loads(file.read(length))
    counts: dict[str, int] = {}
    for name, entry in header.items():
        if name != "__metadata__":
            counts[entry["dtype"]] = counts.get(entry["dtype"], 0) + math.prod(entry["shape"])
    return counts


def float_parameters(counts: Mapping[str, int]) -> int | None:
    """The parameter count of weights stored as floats; None for a quantized checkpoint
    (FP8, packed integers), whose stored values are not its parameters one for one."""
    if not counts or not FLOAT_DTYPES.issuperset(counts):
        return None
    return sum(counts.values())


def folder_parameters(folder: Path) -> int | None:
    """The parameters of a checkpoint folder's safetensors weights; None when they cannot be
    counted (no safetensors, a shard missing, quantized weights)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        shards = sorted(path.name for path in folder.glob("*.safetensors"))
    paths = [folder / shard for shard in shards]
    if not paths or not all(path.is_file() for path in paths):
        return None
    counts: dict[str, int] = {}
    for path in paths:
        for dtype, count in safetensors_counts(path).items():
            counts[dtype] = counts.get(dtype, 0) + count
    return float_parameters(counts)


def checkpoint_parameters(reference: str) -> int | None:
    """The parameter count of a local checkpoint folder or a hub id: read from the files when
    they are on this machine (a folder or the hub cache), else from the hub's safetensors
    headers (a few small requests, before anything is downloaded; none when offline). None
    when unknown."""
    folder = Path(reference).expanduser()
    try:
        if folder.is_dir():
            return folder_parameters(folder)
        cached = _cached_folder(reference)
        if cached is not None and (count := folder_parameters(cached)) is not None:
            return count
        return _hub_parameters(reference)
    except Exception:  # an estimate: whatever goes wrong, loading itself will say it better
        return None


def _cached_folder(reference: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(reference, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def _hub_parameters(reference: str) -> int | None:
    import huggingface_hub.constants as hub
    from huggingface_hub import get_safetensors_metadata

    if hub.HF_HUB_OFFLINE:
        return None
    return float_parameters(get_safetensors_metadata(reference).parameter_count)


def weight_bytes(parameters: int, dtype: torch.dtype) -> int:
    return parameters * dtype.itemsize


# --- what the device has free ------------------------------------------------------------------


def parse_meminfo_available(meminfo: str) -> int | None:
    """MemAvailable of /proc/meminfo text, in bytes."""
    for line in meminfo.splitlines():
        key, _, value = line.partition(":")
        if key == "MemAvailable":
            number, _, unit = value.strip().partition(" ")
            return int(number) * (1024 if unit.strip() == "kB" else 1)
    return None


def cgroup_headroom(files: Iterable[tuple[str, str]] = _CGROUP_FILES) -> int | None:
    """What the process's cgroup (a container's memory limit) lets it allocate, or None when
    there is no limit."""
    for limit_file, usage_file in files:
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 1 << 60:  # v1 writes "no limit" as a huge number
            return None
        return max(0, int(limit) - usage)
    return None


def cpu_available() -> int | None:
    try:
        available = parse_meminfo_available(Path("/proc/meminfo").read_text())
    except OSError:
        return None
    known = [value for value in (available, cgroup_headroom()) if value is not None]
    return min(known) if known else None


def available_room(device: torch.device) -> Room | None:
    """Free memory on ``device``, or None where it is not known (MPS, XPU, another OS)."""
    if device.type == "cpu":
        available = cpu_available()
        return None if available is None else Room("the CPU", available)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, _ = torch.cuda.mem_get_info(index)
        return Room(f"GPU cuda:{index}", free)
    return None


# --- the check ---------------------------------------------------------------------------------


def _gib(count: int) -> str:
    return f"{count / GIB:.1f} GiB"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def refuse_unless_fits(reference: str, parameters: int, dtype: torch.dtype, room: Room,
                       alternatives: Mapping[str, int] | None = None,
                       smaller: str | None = None) -> None:
    """NotEnoughMemory, in one line, when the weights need more than ``room``: what they
    need, what is free, and what fits instead (a smaller dtype, or the largest of
    ``alternatives``, model references -> parameter counts, that fit; ``smaller`` names a
    smaller model of unknown size to try)."""
    needed = weight_bytes(parameters, dtype)
    if needed <= room.available:
        return
    fits = []
    if dtype.itemsize > 2 and weight_bytes(parameters, torch.bfloat16) <= room.available:
        fits.append(f"--dtype bf16 ({_gib(weight_bytes(parameters, torch.bfloat16))})")
    fitting = sorted(((count, name) for name, count in (alternatives or {}).items()
                      if name != reference and weight_bytes(count, dtype) <= room.available),
                     reverse=True)
    fits += [f"{name} ({_gib(weight_bytes(count, dtype))})" for count, name in fitting[:2]]
    advice = [f"what fits: {', '.join(fits)}"] if fits else []
    if smaller is not None and smaller != reference:
        advice.append(f"try a smaller checkpoint such as {smaller}")
    if not advice:
        advice.append("free some memory, or use a machine with more")
    raise NotEnoughMemory(
        f"--model: {reference} needs {_gib(needed)} for its {parameters / 1e9:.1f}B parameters "
        f"in {_dtype_name(dtype)}, and {room.place} has {_gib(room.available)} free; "
        f"{'; '.join(advice)}")


def check_memory(reference: str, parameters: int | None, device: torch.device,
                 dtype: torch.dtype, device_map: str | None = None,
                 alternatives: Mapping[str, int] | None = None, smaller: str | None = None,
                 room: Room | None = None) -> None:
    """Refuse (NotEnoughMemory) a model whose weights cannot fit on ``device``; ``room`` is
    measured when not given. Skipped where a number is unknown, with a device map, or with
    VIDCOM2_NO_MEMORY_CHECK=1."""
    if parameters is None or device_map not in (None, str(device)):
        return
    if os.environ.get(SKIP_VARIABLE, "") not in ("", "0"):
        return
    room = room if room is not None else available_room(device)
    if room is not None:
        refuse_unless_fits(reference, parameters, dtype, room, alternatives, smaller)
