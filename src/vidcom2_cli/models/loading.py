"""Resolve a model reference (hub id or local directory) and load it with sensible defaults."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from ..catalog import ATTENTION_CHOICES, DTYPE_NAMES, SUPPORTED_MODEL_TYPES
from ..errors import ModelLoadError, first_line

_DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float16": torch.float16, "fp16": torch.float16,
                 "float32": torch.float32, "fp32": torch.float32}


@dataclass(frozen=True)
class LoadOptions:
    """How to place and run the model; "auto" picks the best the machine supports."""

    device: str = "auto"
    dtype: str = "auto"
    attention: str = "auto"
    device_map: str | None = None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ModelLoadError(f"--device: {device!r} is not a device ({error})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"--device: {device!r} asked for, but no CUDA GPU is available")
    return resolved


# x86 feature flags (Linux /proc/cpuinfo names) of the instructions that compute bf16 matrix
# products natively: AVX512-BF16 (Cooper Lake, Sapphire Rapids, Zen 4 and later) and AMX-BF16
# (Sapphire Rapids and later). PyTorch's CPU kernels (oneDNN) use them for bf16 matmuls.
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor in /proc/cpuinfo text (x86 ``flags``)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@cache
def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags; empty where /proc/cpuinfo does not exist (macOS,
    Windows). Read once: a few kilobytes of text, no import."""
    try:
        return parse_cpu_flags(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return frozenset()


def cpu_computes_bf16(flags: Iterable[str]) -> bool:
    """Whether a CPU with these feature flags computes bf16 matrix products natively."""
    return not CPU_BF16_FLAGS.isdisjoint(flags)


def resolve_dtype(dtype: str, device: torch.device,
                  flags: Iterable[str] | None = None) -> torch.dtype:
    """``auto``: bf16 on a GPU that computes in it (compute capability 8.0+, Ampere), else
    fp16; on a CPU, bf16 where it computes bf16 natively (AVX512-BF16 or AMX; ``flags``
    defaults to this machine's), else fp32. Emulated bf16 is slower than fp32, and fp16 on a
    CPU is slower still, so neither is chosen there."""
    if dtype not in DTYPE_NAMES:
        raise ModelLoadError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
    chosen = _DTYPES[dtype]
    if chosen is not None:
        return chosen
    if device.type == "cpu":
        native = cpu_computes_bf16(cpu_flags() if flags is None else flags)
        return torch.bfloat16 if native else torch.float32
    if device.type != "cuda":
        return torch.float32
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def flash_attention_2_installed() -> bool:
    """The flash-attn 2 package (FlashAttention 4 installs under the same module name)."""
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


def flash_attention_problem(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why FlashAttention-2 cannot run with this device and dtype, or None when it can."""
    if device.type != "cuda":
        return "needs a CUDA GPU"
    if not flash_attention_2_installed():
        return "needs the flash-attn 2 package (pip install 'vidcom2-cli[flash]')"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"runs in bf16 or fp16 only, not {str(dtype).removeprefix('torch.')}"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"needs compute capability 8.0 or newer (Ampere); this GPU has {major}.{minor}"
    return None


def resolve_attention(attention: str, device: torch.device, dtype: torch.dtype) -> str:
    """``auto``: FlashAttention-2 where it can run, else PyTorch's SDPA."""
    if attention not in ATTENTION_CHOICES:
        raise ModelLoadError(f"--attn: {attention!r} is not one of {', '.join(ATTENTION_CHOICES)}")
    if attention not in ("auto", "flash_attention_2"):
        return attention
    problem = flash_attention_problem(device, dtype)
    if attention == "auto":
        return "sdpa" if problem else "flash_attention_2"
    if problem:
        raise ModelLoadError(f"--attn: flash_attention_2 {problem}")
    return attention


def read_model_type(reference: str) -> str:
    """The checkpoint's ``model_type``; ModelLoadError for anything we cannot or will not load."""
    from transformers import AutoConfig

    path = Path(reference).expanduser()
    if path.exists() and not path.is_dir():
        raise ModelLoadError(f"--model: {reference} is a file; give a checkpoint directory or a "
                             "hub id")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelLoadError(f"--model: {reference} has no config.json; is it a checkpoint "
                             "directory?")
    try:
        config = AutoConfig.from_pretrained(str(path) if path.is_dir() else reference,
                                            trust_remote_code=False)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"--model: cannot load {reference!r}: {first_line(error)}") from None
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        supported = ", ".join(f"{label} ({kind})" for kind, (label, *_) in
                              SUPPORTED_MODEL_TYPES.items())
        raise ModelLoadError(f"--model: {reference} is a {model_type!r} model; supported: "
                             f"{supported}")
    return model_type


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def refuse_pickle_only(directory: Path, reference: str) -> None:
    """ModelLoadError for a checkpoint directory with pickle weights and no safetensors.

    Unpickling can run arbitrary code, so such weights are never loaded (``use_safetensors``);
    transformers' own message for this case only says that model.safetensors is missing.
    """
    if any(directory.glob("*.safetensors")):
        return
    pickles = sorted(path.name for path in directory.iterdir() if path.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelLoadError(
            f"--model: {reference} has only pickle weights ({pickles[0]}), no .safetensors; "
            "pickle files can run code when loaded, so they are refused: convert the "
            "checkpoint to safetensors (save_pretrained) where you trust it")


@dataclass
class LoadedModel:
    """A model and processor ready to run, and how they were placed."""

    reference: str
    model_type: str
    model: torch.nn.Module
    processor: object
    device: torch.device
    dtype: torch.dtype
    attention: str

    @property
    def devices(self) -> list[torch.device]:
        """Where the model's memory is: its device (inputs live there), and every GPU its
        device_map places a part on."""
        placed = getattr(self.model, "hf_device_map", None) or {}
        gpus = {gpu for gpu in map(_as_gpu, [self.device, *placed.values()]) if gpu is not None}
        return sorted(gpus, key=lambda gpu: gpu.index) if gpus else [self.device]


def _as_gpu(place: object) -> torch.device | None:
    """A device or device_map entry (GPU index, "cuda", "cuda:1", "cpu", "disk") as a CUDA
    device with its index ("cuda" is the current GPU, so that it and "cuda:0" are one), or
    None."""
    if isinstance(place, int):
        return torch.device("cuda", place)
    if isinstance(place, str | torch.device) and str(place).startswith("cuda"):
        device = torch.device(place)
        return device if device.index is not None else torch.device(
            "cuda", torch.cuda.current_device())
    return None


def load_model(reference: str, options: LoadOptions = LoadOptions()) -> LoadedModel:
    """Load a supported video LLM and its processor from a hub id or a local directory.

    Weights come from safetensors only, and remote code is never trusted.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_type = read_model_type(reference)
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    attention = resolve_attention(options.attention, device, dtype)
    source = str(Path(reference).expanduser()) if Path(reference).expanduser().is_dir() \
        else reference
    if Path(source).is_dir():
        refuse_pickle_only(Path(source), reference)
    from .memory import check_memory, checkpoint_parameters  # memory imports this module

    sizes = SUPPORTED_MODEL_TYPES[model_type][1]  # the family's checkpoints, smallest first
    check_memory(reference, checkpoint_parameters(source), device, dtype, options.device_map,
                 smaller=sizes[0] if len(sizes) > 1 else None)
    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=False)
        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype=dtype, attn_implementation=attention, use_safetensors=True,
            trust_remote_code=False, device_map=options.device_map or str(device),
        )
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"--model: cannot load {reference!r}: {first_line(error)}") from None
    model.eval()
    return LoadedModel(reference=reference, model_type=model_type, model=model,
                       processor=processor, device=device, dtype=dtype, attention=attention)
