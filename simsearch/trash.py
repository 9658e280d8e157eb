"""Putting back what a duplicate decision moved to the trash, where the platform's trash can be read.

send2trash moves a file into the freedesktop.org trash on Linux and the BSDs: the home trash
($XDG_DATA_HOME/Trash, else ~/.local/share/Trash) when the file is on the home's disk, else the trash of
the file's own volume ($topdir/.Trash/$uid or $topdir/.Trash-$uid), each with files/NAME beside
info/NAME.trashinfo, whose Path= line says where the file was (absolute, or relative to the volume's top).
The specification says how to read that back; this follows it. macOS and Windows keep their trash behind
their own APIs: there simsearch says which files to put back by hand.
"""

from __future__ import annotations

import os
import shutil
import sys
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote

from .errors import ChangedError, NotFoundError, SimsearchError

FREEDESKTOP = sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd"))


def _home_trash() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "Trash"


def _top(path: Path) -> Path:
    """The mount point of the volume path is on: the highest folder on the same device."""
    here = path.parent
    dev = here.stat().st_dev
    while here.parent != here and here.parent.stat().st_dev == dev:
        here = here.parent
    return here


def _trashes(original: Path) -> list[tuple[Path, Path | None]]:
    """(trash folder, the top its relative Path= lines start from) where original may have gone."""
    found: list[tuple[Path, Path | None]] = [(_home_trash(), None)]
    try:
        top = _top(original)
    except OSError:
        return found
    uid = os.getuid()
    found += [(top / ".Trash" / str(uid), top), (top / f".Trash-{uid}", top)]
    return found


def _trashed_at(info: Path, original: Path, top: Path | None) -> datetime | None:
    """When info records original's trashing, else None."""
    try:
        lines = info.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError:
        return None
    fields = dict(line.split("=", 1) for line in lines if "=" in line)
    where = Path(os.fsdecode(unquote(fields.get("Path", ""), errors="surrogateescape")))
    if not where.is_absolute():
        if top is None:
            return None
        where = top / where
    if os.path.normpath(where) != os.path.normpath(original):
        return None
    try:
        return datetime.fromisoformat(fields.get("DeletionDate", ""))
    except ValueError:
        return datetime.min


def restore(original: str) -> None:
    """Move the most recently trashed file that was at original back there (NotFoundError if the trash has
    none; ChangedError if a file is at original again: nothing is overwritten)."""
    if not FREEDESKTOP:
        raise SimsearchError(f"{original}: this platform's trash cannot be read back here; put it back from the "
                             f"Trash (macOS) or the Recycle Bin (Windows) by hand")
    target = Path(original)
    if os.path.lexists(target):
        raise ChangedError(f"{original} exists again: the trashed copy was left in the trash, nothing overwritten")
    best: tuple[datetime, Path, Path] | None = None
    for trash, top in _trashes(target):
        for info in (trash / "info").glob("*.trashinfo") if (trash / "info").is_dir() else ():
            when = _trashed_at(info, target, top)
            stored = trash / "files" / info.name[: -len(".trashinfo")]
            if when is not None and os.path.lexists(stored) and (best is None or when > best[0]):
                best = (when, info, stored)
    if best is None:
        raise NotFoundError(f"{original} is not in the trash any more (emptied, or put back already)")
    _, info, stored = best
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(stored), str(target))  # a rename on one disk
    info.unlink()
