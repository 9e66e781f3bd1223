"""Writing and reading JSON-lines files in the batch tests."""

from __future__ import annotations

import json
from pathlib import Path


def jsonl(path: Path, rows: list[dict | str]) -> Path:
    """Write ``rows`` one per line; a string row is written as is (for malformed lines)."""
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n"
                            for row in rows))
    return path


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]
