"""Peak memory on the CPU: a per-stage peak, not the process's lifetime one."""

from __future__ import annotations

import numpy as np
import torch

from vidcom2_cli.timing import peak_memory, reset_peak_memory

CPU = torch.device("cpu")
MB = 2**20


def test_cpu_peak_resets_between_stages():
    reset_peak_memory(CPU)
    before = peak_memory(CPU)
    block = np.ones(300 * MB // 8)  # touched, so resident
    del block
    during = peak_memory(CPU)
    assert during.source == "process_peak_rss"
    assert during.bytes - before.bytes > 250 * MB
    reset_peak_memory(CPU)  # the block is gone: a new stage starts from the current size
    assert peak_memory(CPU).bytes < during.bytes - 250 * MB
