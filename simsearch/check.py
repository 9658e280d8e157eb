"""`simsearch check`: each part of a store checked against the catalog, the truth, and what can be made
again from it made again (`repair`).

What can be rebuilt: the FAISS file (from the catalog's vectors), duplicate fingerprints (taken again
from the photos when `duplicates` needs them), cached thumbnails and previews (made again when shown),
and the temp files of killed runs (removed). What cannot: a damaged catalog database, which holds the
only copy of the vectors and decisions; the check says so and how to recover it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError

from .collection import Collection
from .errors import SimsearchError, StoreError
from .renditions import FOLDERS, RenditionCache
from .results import CheckReport, Problem
from .verify import VERSION, Fingerprint, is_current


def _damaged_catalog(broken: list[str]) -> Problem:
    return Problem("catalog", "the database's integrity check failed: " + "; ".join(broken[:5]) +
                   ". This cannot be repaired here: restore the catalog from a backup (SQLite's "
                   "`sqlite3 catalog.sqlite .recover` may save what is left)", False)


def check_unopened(root: Path, url: str, error: SimsearchError) -> CheckReport:
    """A store that will not even open: the error, and what the database's own check says of the file."""
    problems = [Problem("catalog", f"the store cannot be opened: {error}", False)]
    broken = sqlite_integrity(url)
    if broken:
        problems.append(_damaged_catalog(broken))
    return CheckReport(store=str(root), checked=["catalog"], problems=problems)


def sqlite_integrity(url: str) -> list[str]:
    """SQLite's integrity_check of a catalog file, opened read-only (nothing else of simsearch needed)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or not Path(parsed.database).is_file():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{parsed.database}?mode=ro", uri=True)) as conn:
            found = [str(r[0]) for r in conn.execute("PRAGMA integrity_check(20)")]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    return [] if found == ["ok"] else found


def check_store(root: Path, collection: Collection, dim: int | None, *, repair: bool = False) -> CheckReport:
    problems: list[Problem] = []
    catalog = collection.catalog
    stale = collection.stale_temp_files()  # first: rebuilding the index as a writer removes them
    broken = catalog.integrity()
    if broken:
        problems.append(_damaged_catalog(broken))
    checked = ["catalog"]
    parts: list[tuple[str, Callable[[], Problem | None]]] = [
        ("fingerprints", lambda: _fingerprints(collection, repair)),
        ("renditions", lambda: _renditions(root, repair)),
        ("temp-files", lambda: _temp_files(collection, stale, repair)),
    ]
    if dim is not None:
        parts.insert(0, ("index", lambda: _index(collection, dim, repair)))
    for part, examine in parts:
        checked.append(part)
        try:
            problem = examine()
        except DatabaseError as exc:  # a damaged catalog: the part is left unchecked, never a traceback
            problem = Problem(part, f"not checked: the catalog could not be read ({exc.orig or exc})", False)
        if problem is not None:
            problems.append(problem)
    return CheckReport(store=str(root), checked=checked, problems=problems)


def _index(collection: Collection, dim: int, repair: bool) -> Problem | None:
    why = collection.checkpoint_problem(dim)
    if why is None:
        return None
    return Problem("index", f"the vector index file does not mirror the catalog: {why}",
                   _mended(lambda: collection.rebuild(dim)) if repair else False)


def _fingerprints(collection: Collection, repair: bool) -> Problem | None:
    catalog = collection.catalog
    bad = []
    for sha, data in catalog.iter_fingerprints():
        if not is_current(data) and len(data) > 0 and data[0] < VERSION:
            continue  # taken by an older simsearch: `duplicates` takes it again, nothing is damaged
        try:
            Fingerprint.from_bytes(data)
        except (ValueError, IndexError):
            bad.append(sha)
    if not bad:
        return None
    return Problem("fingerprints", f"{len(bad)} duplicate fingerprints cannot be read",
                   _mended(lambda: catalog.drop_fingerprints(bad)) if repair else False)


def _renditions(root: Path, repair: bool) -> Problem | None:
    damaged = [p for name in FOLDERS for p in RenditionCache(root / name).damaged()]
    if not damaged:
        return None
    return Problem("renditions", f"{len(damaged)} cached thumbnails or previews are not whole JPEGs",
                   _mended(lambda: [p.unlink(missing_ok=True) for p in damaged]) if repair else False)


def _temp_files(collection: Collection, stale: list[Path], repair: bool) -> Problem | None:
    if not stale:
        return None
    return Problem("temp-files", f"{len(stale)} temp files of runs that were killed "
                                 f"({', '.join(p.name for p in stale[:3])})",
                   _mended(lambda: _remove_as_writer(collection)) if repair else False)


def _remove_as_writer(collection: Collection) -> None:
    with collection.writer():
        pass  # taking the write lock removes them (Collection.writer)


def _mended(fix: object) -> bool:
    try:
        fix()  # type: ignore[operator]
    except (StoreError, OSError):
        return False
    return True
