"""Videos still inside the zip archives a hub dataset ships them in.

lmms-eval unpacks a video task's archives into its cache folder before the first run and opens
``<cache>/<name>``; a user holding the same download gets the same: each video a question
needs that is not unpacked yet is taken out of the archive that holds it, once, into DIR
itself (``DIR/<member>``), and only those (a ``--limit`` run unpacks only its own videos).
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path, PurePosixPath


class Archives:
    """The members of every ``*.zip`` under a folder, found by path or by file name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._members: dict[str, tuple[Path, str]] = {}
        self._names: dict[str, list[tuple[Path, str]]] = {}
        for archive in sorted(root.rglob("*.zip")):
            try:
                with zipfile.ZipFile(archive) as opened:
                    members = [info.filename for info in opened.infolist()
                               if not info.is_dir()]
            except (OSError, zipfile.BadZipFile):
                continue  # not a readable archive: its videos stay "not found"
            for member in members:
                self._members.setdefault(member, (archive, member))
                self._names.setdefault(PurePosixPath(member).name, []).append(
                    (archive, member))

    def __bool__(self) -> bool:
        return bool(self._members)

    def find(self, name: str) -> tuple[Path, str] | None:
        """The archive and member for a video named ``name`` (a path inside the archives,
        or a file name that only one member has)."""
        if name in self._members:
            return self._members[name]
        found = self._names.get(PurePosixPath(name).name, [])
        return found[0] if len(found) == 1 else None

    def unpack(self, archive: Path, member: str) -> Path:
        """``member`` written to ``root/member`` (unless there already); OSError or
        ValueError when it cannot be."""
        parts = PurePosixPath(member).parts
        if PurePosixPath(member).is_absolute() or ".." in parts:
            raise ValueError(f"{archive.name} names {member!r}, outside the folder")
        target = self.root.joinpath(*parts)
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.unpacking")
        try:
            with zipfile.ZipFile(archive) as opened, opened.open(member) as source, \
                    partial.open("wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            partial.replace(target)  # whole or not at all: an interrupted unpack leaves none
        except (zipfile.BadZipFile, KeyError) as error:
            partial.unlink(missing_ok=True)
            raise ValueError(f"{archive.name}: {error}") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return target
