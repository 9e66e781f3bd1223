"""Peak memory on the CPU: a per-stage peak, not the process's lifetime one."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
import torch

from vidcom2_cli.models.loading import LoadedModel
from vidcom2_cli.timing import PeakMemory, is_out_of_memory, peak_memory, reset_peak_memory

CPU = torch.device("cpu")
MB = 2**20


def _touch_fresh_pages(size: int) -> None:
    """Make ``size`` bytes resident in new pages, then give them back.

    An anonymous mapping, not an array: malloc may hand an array memory that an earlier test
    left resident, which would not raise the resident set at all.
    """
    with mmap.mmap(-1, size) as block:
        np.frombuffer(block, dtype=np.uint8)[:] = 1


def test_cpu_peak_resets_between_stages():
    reset_peak_memory([CPU])
    before = peak_memory([CPU])
    _touch_fresh_pages(300 * MB)
    during = peak_memory([CPU])
    assert during.source == "process_peak_rss"
    assert during.bytes - before.bytes > 250 * MB
    reset_peak_memory([CPU])  # the pages are gone: a new stage starts from the current size
    assert peak_memory([CPU]).bytes < during.bytes - 250 * MB


@pytest.mark.parametrize(("error", "expected"), [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (torch.OutOfMemoryError("out of memory"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"),
     True),
    (RuntimeError("CUDA error: out of memory"), True),
    (RuntimeError("shape mismatch"), False),
    (ValueError("out of memory"), False),  # only runtime errors from the device count
])
def test_out_of_memory_is_recognised_however_it_arrives(error, expected):
    assert is_out_of_memory(error) is expected


def test_gpu_peak_covers_every_gpu_of_a_device_map(monkeypatch):
    """A model spread over two GPUs: both peaks are reset and read, and added up."""
    gpu0, gpu1 = torch.device("cuda", 0), torch.device("cuda", 1)
    reset = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset.append)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated",
                        lambda device: {0: 5 * MB, 1: 7 * MB}[device.index])
    spread = torch.nn.Linear(1, 1)
    spread.hf_device_map = {"vision": 0, "language.layers.0": 0, "language.layers.1": "cuda:1",
                            "lm_head": "cpu", "offloaded": "disk"}
    loaded = LoadedModel("m", "qwen2_vl", spread, None, gpu0, torch.bfloat16, "sdpa")
    assert loaded.devices == [gpu0, gpu1]
    reset_peak_memory(loaded.devices)
    assert reset == [gpu0, gpu1]
    assert peak_memory(loaded.devices) == PeakMemory(12 * MB, "cuda_max_allocated")
    inputs_elsewhere = LoadedModel("m", "qwen2_vl", spread, None, torch.device("cuda", 2),
                                   torch.bfloat16, "sdpa")
    assert inputs_elsewhere.devices == [gpu0, gpu1, torch.device("cuda", 2)]
    # --device cuda (no index) with the map transformers makes for it: one GPU, counted once
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    single = torch.nn.Linear(1, 1)
    single.hf_device_map = {"": torch.device("cuda", 0)}
    plain_cuda = LoadedModel("m", "qwen2_vl", single, None, torch.device("cuda"), torch.bfloat16,
                             "sdpa")
    assert plain_cuda.devices == [gpu0]
    assert peak_memory(plain_cuda.devices) == PeakMemory(5 * MB, "cuda_max_allocated")
    whole = LoadedModel("m", "qwen2_vl", torch.nn.Linear(1, 1), None, CPU, torch.float32, "sdpa")
    assert whole.devices == [CPU]
