"""The GPU suite's process and file plumbing: stopping a part's process group, archiving its
files, reading its last line, writing the summary atomically."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

from gpu_profiles import Part

KILL_GRACE_S = 5.0  # after SIGTERM at the time limit, before SIGKILL


def queue_take(queue: Iterator[Part], count: int) -> list[Part]:
    taken = []
    for part in queue:
        taken.append(part)
        if len(taken) == count:
            break
    return taken


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the part's whole process group, then SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    process.wait()


def archive(folder: Path, bundle: Path, name: str) -> list[str]:
    """Add the folder's files to the zip under NAME/; returns their names there."""
    names = []
    with zipfile.ZipFile(bundle, "a", compression=zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                arcname = f"{name}/{path.relative_to(folder).as_posix()}"
                zipped.write(path, arcname)
                names.append(arcname)
    return names


def last_line(path: Path) -> str | None:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return None
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else None


def write_atomically(path: Path, text: str) -> None:
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text(text)
    scratch.replace(path)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
