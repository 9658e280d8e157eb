"""Thumbnails and previews the server makes, cached in the store's folder and pruned as photos change.

One file per photo content: `FOLDER/<id % 256, two hex digits>/<id>-<first 16 hex digits of sha256>.jpg`.
Keyed by content, an edited photo gets a new file once re-indexed; the subfolders keep each one small,
so making a photo's new rendition can drop its older ones by listing a few hundred names, and `prune`
drops those of photos the store no longer holds. These are the store's own cache files, never the user's.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

from .catalog import Catalog
from .errors import StoreError
from .files import atomic_write

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d+)-([0-9a-fx]{1,16})\.jpg$")
FOLDERS = ("thumbnails", "previews")  # in the store's folder, one cache each
STALE_TEMP_S = 3600.0


class RenditionCache:
    """One folder of renditions of one size (the server keeps thumbnails and previews apart)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, image_id: int, sha256: str | None) -> Path:
        return self.folder / f"{image_id % 256:02x}" / f"{image_id}-{(sha256 or 'x')[:16]}.jpg"

    def get(self, image_id: int, sha256: str | None, make: Callable[[], bytes]) -> bytes:
        """The cached rendition of this content, made (and the photo's older ones dropped) on a miss."""
        path = self.path(image_id, sha256)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        data = make()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)
        except (StoreError, OSError) as exc:  # a full or read-only disk: served all the same, made again next time
            log.warning("could not cache %s: %s", path.name, exc)
            return data
        for old in path.parent.glob(f"{image_id}-*.jpg"):
            if old != path:
                old.unlink(missing_ok=True)
        return data

    def damaged(self) -> list[Path]:
        """Cached files that are not whole JPEGs (start and end markers): served as they are, they would
        show as broken pictures until the photo changes."""
        bad = []
        for path in self.folder.rglob("*.jpg") if self.folder.is_dir() else ():
            try:
                with path.open("rb") as f:
                    head = f.read(3)
                    f.seek(-2, 2)
                    whole = head == b"\xff\xd8\xff" and f.read(2) == b"\xff\xd9"
            except OSError:
                whole = False
            if not whole:
                bad.append(path)
        return bad

    def prune(self, catalog: Catalog, chunk: int = 500) -> int:
        """Drop the renditions of photos the catalog no longer holds, or holds with other content, any file
        not in this layout (an earlier version's) and temp files of killed writes; returns how many went. The catalog is read a chunk
        of ids at a time, so memory follows the chunk, not the collection."""
        removed = 0
        batch: list[tuple[Path, int, str]] = []

        def settle() -> int:
            want = {i: (r["sha256"] or "x")[:16] for i, r in catalog.records([i for _, i, _ in batch]).items()}
            gone = [path for path, i, key in batch if want.get(i) != key]
            for path in gone:
                path.unlink(missing_ok=True)
            batch.clear()
            return len(gone)

        for tmp in self.folder.rglob(".*.tmp") if self.folder.is_dir() else ():
            try:  # a write killed half-way; an hour old, so no live write is taken
                if time.time() - tmp.stat().st_mtime > STALE_TEMP_S:
                    tmp.unlink()
                    removed += 1
            except OSError:
                pass
        for path in self.folder.rglob("*.jpg") if self.folder.is_dir() else ():
            found = _NAME.match(path.name)
            if found is None or path.parent != self.path(int(found[1]), found[2]).parent:
                path.unlink(missing_ok=True)  # not where this layout puts it: an earlier version's, or stray
                removed += 1
                continue
            batch.append((path, int(found[1]), found[2]))
            if len(batch) >= chunk:
                removed += settle()
        return removed + (settle() if batch else 0)
