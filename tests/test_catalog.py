"""The catalog on SQLite and on a real PostgreSQL server: transactions, the vectors version, prefix queries."""

from __future__ import annotations

import multiprocessing
import sqlite3
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from simsearch.catalog import Catalog, Changes, ImageFields, ImageFilter
from simsearch.errors import StoreError

from .conftest import database


def _fields(path: str, sha: str = "s", **kw: object) -> ImageFields:
    return ImageFields(path=path, size=10, mtime_ns=1, sha256=sha, **kw)  # type: ignore[arg-type]


def _vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=8).astype(np.float32)
    return v / np.linalg.norm(v)


def test_write_returns_what_faiss_must_mirror(db_url: str) -> None:
    cat = Catalog(db_url)
    w1 = cat.write(Changes(upserts=[(_fields("/p/a.jpg", "a"), _vec(1)), (_fields("/p/b.jpg", "b", error="bad"), None)]))
    assert w1.version == 1 and len(w1.added_ids) == 1 and len(w1.removed_ids) == 0
    a_id = int(w1.added_ids[0])
    w2 = cat.write(Changes(upserts=[(_fields("/p/a.jpg", "a2"), _vec(2))]))  # re-embedded: same id
    assert w2.added_ids.tolist() == [a_id] and w2.removed_ids.tolist() == [a_id] and w2.version == 2
    np.testing.assert_array_equal(cat.vector(a_id, 8), _vec(2))
    w3 = cat.write(Changes(touches=[(a_id, 11, 2)]))
    assert w3.version == 2  # no vector changed
    assert cat.counts()["images"] == 1 and cat.counts()["failed"] == 1
    assert [f["error"] for f in cat.failures()] == ["bad"]
    w4 = cat.write(Changes(deletes=[a_id]))
    assert w4.removed_ids.tolist() == [a_id] and cat.vector(a_id, 8) is None


def test_ids_are_never_reused_after_delete(db_url: str) -> None:
    cat = Catalog(db_url)
    first = int(cat.write(Changes(upserts=[(_fields("/p/a.jpg"), _vec(1))])).added_ids[0])
    cat.write(Changes(deletes=[first]))
    second = int(cat.write(Changes(upserts=[(_fields("/p/a.jpg"), _vec(1))])).added_ids[0])
    assert second > first


def test_prefix_queries_do_not_match_sibling_folders(db_url: str) -> None:
    cat = Catalog(db_url)
    # "/p/a-b" and "/p/a b" sort between "/p/a" and "/p/a/..." byte-wise but not in a locale's collation
    for i, p in enumerate(["/p/a/1.jpg", "/p/a/sub/2.jpg", "/p/ab/3.jpg", "/p/a.jpg", "/p/a-b/4.jpg", "/p/a b/5.jpg",
                           "/p/A/6.jpg"]):
        cat.write(Changes(upserts=[(_fields(p, str(i)), _vec(i))]))
    assert [e.path for e in cat.entries_under("/p/a")] == ["/p/a/1.jpg", "/p/a/sub/2.jpg"]
    assert [e.path for e in cat.entries_under("/p/a-b")] == ["/p/a-b/4.jpg"]
    assert len(cat.ids_for_paths(["/p/a"])) == 2
    assert len(cat.ids_for_paths(["/p/a.jpg"])) == 1


def test_iter_vectors_in_chunks_covers_everything(db_url: str) -> None:
    cat = Catalog(db_url)
    cat.write(Changes(upserts=[(_fields(f"/p/{i}.jpg", str(i)), _vec(i)) for i in range(25)]))
    chunks = list(cat.iter_vectors(8, chunk=10))
    assert [len(ids) for ids, _ in chunks] == [10, 10, 5]
    ids = np.concatenate([i for i, _ in chunks])
    vecs = np.concatenate([v for _, v in chunks])
    np.testing.assert_array_equal(vecs[3], cat.vector(int(ids[3]), 8))


def test_meta_roundtrip_and_schema_guard(db_url: str) -> None:
    url = db_url
    cat = Catalog(url)
    cat.set_meta(model={"model": "m", "dim": 8})
    assert Catalog(url).get_meta("model") == {"model": "m", "dim": 8}
    cat.set_meta(schema_version=99)
    with pytest.raises(StoreError, match="schema version 99"):
        Catalog(url)


def test_database_errors_become_store_errors(tmp_path) -> None:
    # SQLite's header, then garbage: past simsearch's own look at the header, SQLite itself must refuse it
    (tmp_path / "notadb.sqlite").write_bytes(b"SQLite format 3\0" + b"this is not a database" * 100)
    with pytest.raises(StoreError, match="catalog database error"):
        Catalog(f"sqlite:///{tmp_path / 'notadb.sqlite'}")


def test_errors_of_reads_through_sqlite3s_own_cursor_become_store_errors(tmp_path: Path) -> None:
    """Lookups by key (re-scoring's vectors, the bulk writes' paths) bypass SQLAlchemy on SQLite for speed;
    their failures must still surface as StoreError, not as a bare sqlite3 exception."""
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    cat = Catalog(url)
    cat.write(Changes(upserts=[(_fields("/p/1.jpg", "1"), _vec(1))]))
    assert cat.vectors_for(cat.vector_ids(), 8).shape == (1, 8)
    with sqlite3.connect(tmp_path / "c.sqlite") as con:
        con.execute("DROP TABLE vectors")
    with pytest.raises(StoreError, match="catalog database error: OperationalError: no such table: vectors"):
        cat.vectors_for(np.array([1]), 8)
    cat.close()


def test_filters_on_the_database(db_url: str) -> None:
    cat = Catalog(db_url)
    rows = [("/p/a/1.jpg", "JPEG", 100, 100, datetime(2020, 1, 1)), ("/p/a/2.png", "PNG", 60_000, 60_000, None),
            ("/p/b/3.jpg", "jpeg", 10, 10, datetime(2021, 6, 1))]
    cat.write(Changes(upserts=[(_fields(p, p, format=f, width=w, height=h, taken_at=t), _vec(i))
                               for i, (p, f, w, h, t) in enumerate(rows)]))
    paths = {i: r["path"] for i, r in cat.records(cat.vector_ids()).items()}

    def match(**kw: object) -> list[str]:
        return sorted(paths[int(i)] for i in cat.ids_matching(ImageFilter(**kw)))  # type: ignore[arg-type]

    assert match(folder="/p/a") == ["/p/a/1.jpg", "/p/a/2.png"]
    assert match(formats=("JPEG",)) == ["/p/a/1.jpg", "/p/b/3.jpg"]
    assert match(min_pixels=3_000_000_000) == ["/p/a/2.png"]  # 3.6e9 pixels: past a 32-bit product
    assert match(taken_from=datetime(2020, 6, 1)) == ["/p/b/3.jpg"]


def test_concurrent_writers_on_postgresql(tmp_path: Path) -> None:
    """Four processes sharing one catalog: no lost version bump, no duplicate path, every write kept.

    PostgreSQL only: a SQLite store admits one writer at a time through its lock file (tested in test_indexing).
    """
    with database("postgresql", tmp_path) as url:
        Catalog(url).close()
        with multiprocessing.get_context("spawn").Pool(4) as pool:
            versions = pool.starmap(_write_ten_times, [(url, w) for w in range(4)])
        cat = Catalog(url)
        paths = [r["path"] for r in cat.records(cat.vector_ids()).values()]
        assert len(paths) == len(set(paths)) == 5 + 4 * 10  # shared paths written by all, once each
        assert sorted(v for vs in versions for v in vs) == list(range(1, 41))  # each write its own version
        assert cat.get_meta("vectors_version") == 40
        cat.close()


def _write_ten_times(url: str, worker: int) -> list[int]:
    cat = Catalog(url)
    out = []
    for i in range(10):
        shared = [(_fields(f"/shared/{j}.jpg", f"{worker}-{i}"), _vec(j)) for j in range(5)]
        out.append(cat.write(Changes(upserts=[*shared, (_fields(f"/own/{worker}/{i}.jpg"), _vec(100 + i))])).version)
    cat.close()
    return out


def test_entries_come_in_the_listings_order_a_chunk_at_a_time(db_url: str) -> None:
    """The scan merges the catalog's rows with the sorted listing, so both must agree on the order: code
    points, as Python compares strings (a linguistic collation would put "a b" before "a-b" or "A" beside "a")."""
    cat = Catalog(db_url)
    names = ["a b.jpg", "a-b.jpg", "a.jpg", "a/x.jpg", "a0.jpg", "A.jpg", "Z/1.jpg", "é.jpg", "z.jpg", "日本.jpg",
             "a/b/c.jpg", "a/b.jpg", "😀.jpg"]
    cat.write(Changes(upserts=[(_fields(f"/p/{n}", str(i)), _vec(i)) for i, n in enumerate(names)]))
    cat.write(Changes(upserts=[(_fields("/q/outside.jpg", "x"), _vec(99))]))
    for chunk in (1, 2, 5, 100):
        assert [e.path for e in cat.entries_under("/p", chunk=chunk)] == sorted(f"/p/{n}" for n in names)
