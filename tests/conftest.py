"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tiny_models import TINY_PIXEL_BOUNDS, make_tiny_checkpoint

from vidcom2_cli.models import sizing

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
