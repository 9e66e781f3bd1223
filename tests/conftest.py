"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tiny_models import make_tiny_checkpoint


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
