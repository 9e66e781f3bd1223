"""Shared fixtures."""

from __future__ import annotations

import os

# One intra-op thread for torch, here and in the `vidcom2` subprocesses the tests start (they
# inherit the variable; it must be set before torch is imported). The tiny models' operations
# are far too small to gain from a second thread, and on a loaded machine (several test runs on
# two shared cores) OpenMP's threads wait on each other: a tiny model's decoding step took 20 to
# 60 times longer with 2 threads than with 1 (docs/development.md). Set the variable to
# override it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from tiny_models import TINY_PIXEL_BOUNDS, make_tiny_checkpoint

from vidcom2_cli.models import sizing
from vidcom2_cli.models.base import VideoAdapter

# in case a pytest plugin imported torch before the variable was set
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Property tests draw the same examples on every run and every machine (a seed derived from each
# test's source, no example database), so `python -m pytest` cannot fail at random: in CI or on
# a fresh clone. To look for new failing examples, draw at random with a seed of your choice:
# `pytest --hypothesis-seed=N` (which switches to the "explore" profile below), and pin every
# failing example found as a regular test.
settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
settings.load_profile("deterministic")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--hypothesis-seed", default=None) is not None and not config.getoption(
            "--hypothesis-profile", default=None):
        settings.load_profile("explore")


# The tiny checkpoints' frames stay tiny: every Qwen family's default bounds become the tiny
# ones in this process (a CLI test run in a subprocess gets the real defaults). Tests of the
# real defaults read sizing.PUBLISHED_PIXEL_BOUNDS, which this leaves alone.
sizing.DEFAULT_PIXEL_BOUNDS.update(dict.fromkeys(sizing.DEFAULT_PIXEL_BOUNDS, TINY_PIXEL_BOUNDS))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A function family -> directory of a tiny saved checkpoint, built once per session."""
    root = tmp_path_factory.mktemp("tiny_checkpoints")
    built: dict[str, Path] = {}

    def checkpoint(family: str) -> Path:
        if family not in built:
            built[family] = make_tiny_checkpoint(family, root / family)
        return built[family]

    return checkpoint


@pytest.fixture
def encoder_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts vision-encoder runs, whatever the family (one entry per call)."""
    calls: list[int] = []
    real = VideoAdapter.encode

    def counted(self, item, *args, **kwargs):
        calls.append(1)
        return real(self, item, *args, **kwargs)

    monkeypatch.setattr(VideoAdapter, "encode", counted)
    return calls
