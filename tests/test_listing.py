"""The scan is a merge of two sorted streams (the folder's listing and the catalog's rows): an unchanged
re-run holds neither whole, and paths that sort differently under other rules still pair up exactly."""

from __future__ import annotations

import hashlib
import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np

import simsearch
from simsearch.catalog import Changes, ImageFields
from simsearch.config import Settings
from simsearch.embedder import CallableEmbedder

from .conftest import photo

FILES = 40_000  # enough that holding the listing or the rows (about 300 bytes a file) would show


def _projection(dim: int = 16) -> CallableEmbedder:
    w = np.random.default_rng(0).standard_normal((8 * 8 * 3, dim)).astype(np.float32)
    return CallableEmbedder(lambda x: x.reshape(len(x), -1) @ w, name="projection", input_size=(8, 8))


def test_unchanged_rerun_holds_neither_the_listing_nor_the_catalog(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    empty = hashlib.sha256(b"").hexdigest()
    rows = []
    for d in range(200):
        folder = root / f"{d:03d}"
        folder.mkdir(parents=True)
        for i in range(FILES // 200):
            p = folder / f"IMG_{i:04d}.jpg"
            p.touch()
            rows.append((ImageFields(str(p), 0, p.stat().st_mtime_ns, empty, error="empty file"), None))
    settings = Settings(batch_size=4, workers=2)
    with simsearch.open(tmp_path / "store", model=_projection(), settings=settings, create=True) as store:
        for start in range(0, len(rows), 5000):  # the rows an earlier run would have written
            store.write(Changes(upserts=rows[start : start + 5000]))
        store.index(root)  # records the folder
    del rows

    with simsearch.open(tmp_path / "store", model=_projection(), settings=settings) as store:
        tracemalloc.start()
        try:
            report = store.index(root)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert (report.scanned, report.unchanged, report.added, report.removed) == (FILES, FILES, 0, 0)
        assert store.collection.loaded is None  # nothing changed: the vectors were never loaded
    # the whole listing as paths, or the rows as entries, would take over 10 MB here
    assert peak < 4_000_000, f"an unchanged re-run of {FILES} files peaked at {peak:,} bytes of Python memory"


def test_paths_that_sort_apart_in_other_orders_pair_up(tmp_path: Path) -> None:
    """"-" < "." < "/" < "0" by code point: a folder's files around its subfolder, spaces, case, non-ASCII."""
    root = tmp_path / "photos"
    names = ["a b.jpg", "a-b.jpg", "a.jpg", "a/x.jpg", "a/y z.png", "a0.jpg", "A.jpg", "é.jpg", "z/日本.png"]
    for i, n in enumerate(names):
        photo(root / n, seed=i, fmt="PNG" if n.endswith(".png") else None)
    settings = Settings(batch_size=4, workers=2)
    with simsearch.open(tmp_path / "store", model=_projection(), settings=settings, create=True) as store:
        assert store.index(root).added == len(names)
        assert store.index(root).unchanged == len(names)  # every row met its file
        (root / "a" / "x.jpg").unlink()
        shutil.move(root / "a-b.jpg", root / "a" / "moved.jpg")  # sorts elsewhere: still a move
        photo(root / "a" / "new.jpg", seed=99)
        os.utime(root / "a0.jpg", ns=(1, 1))  # same bytes, new time: a touch
        report = store.index(root)
        assert (report.added, report.moved, report.removed, report.unchanged) == (1, 1, 1, len(names) - 2)
        indexed = sorted(Path(r["path"]).relative_to(root).as_posix() for r in store.catalog.records(range(1, 100)).values())
        assert indexed == sorted(set(names) - {"a/x.jpg", "a-b.jpg"} | {"a/moved.jpg", "a/new.jpg"})
