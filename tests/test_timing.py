"""Peak memory on the CPU: a per-stage peak, not the process's lifetime one."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
import torch

from vidcom2_cli.timing import is_out_of_memory, peak_memory, reset_peak_memory

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
    reset_peak_memory(CPU)
    before = peak_memory(CPU)
    _touch_fresh_pages(300 * MB)
    during = peak_memory(CPU)
    assert during.source == "process_peak_rss"
    assert during.bytes - before.bytes > 250 * MB
    reset_peak_memory(CPU)  # the pages are gone: a new stage starts from the current size
    assert peak_memory(CPU).bytes < during.bytes - 250 * MB


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
