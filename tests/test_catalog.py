"""Catalog on in-memory SQLite: transactions, the vectors version, prefix queries."""

from __future__ import annotations

import numpy as np
import pytest

from simsearch.catalog import Catalog, Changes, ImageFields
from simsearch.errors import StoreError


def _fields(path: str, sha: str = "s", **kw: object) -> ImageFields:
    return ImageFields(path=path, size=10, mtime_ns=1, sha256=sha, **kw)  # type: ignore[arg-type]


def _vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=8).astype(np.float32)
    return v / np.linalg.norm(v)


def test_write_returns_what_faiss_must_mirror() -> None:
    cat = Catalog("sqlite://")
    w1 = cat.write(Changes(upserts=[(_fields("/p/a.jpg", "a"), _vec(1)), (_fields("/p/b.jpg", "b", error="bad"), None)]))
    assert w1.version == 1 and len(w1.added_ids) == 1 and len(w1.removed_ids) == 0
    a_id = int(w1.added_ids[0])
    w2 = cat.write(Changes(upserts=[(_fields("/p/a.jpg", "a2"), _vec(2))]))  # re-embedded: same id
    assert w2.added_ids.tolist() == [a_id] and w2.removed_ids.tolist() == [a_id] and w2.version == 2
    np.testing.assert_array_equal(cat.vector(a_id, 8), _vec(2))
    w3 = cat.write(Changes(touches=[(a_id, 11, 2)]))
    assert w3.version == 2  # no vector changed
    assert cat.counts()["images"] == 1 and cat.counts()["failed"] == 1
    assert [f["reason"] for f in cat.failures()] == ["bad"]
    w4 = cat.write(Changes(deletes=[a_id]))
    assert w4.removed_ids.tolist() == [a_id] and cat.vector(a_id, 8) is None


def test_ids_are_never_reused_after_delete(tmp_path) -> None:
    cat = Catalog(f"sqlite:///{tmp_path / 'c.sqlite'}")
    first = int(cat.write(Changes(upserts=[(_fields("/p/a.jpg"), _vec(1))])).added_ids[0])
    cat.write(Changes(deletes=[first]))
    second = int(cat.write(Changes(upserts=[(_fields("/p/a.jpg"), _vec(1))])).added_ids[0])
    assert second > first


def test_prefix_queries_do_not_match_sibling_folders() -> None:
    cat = Catalog("sqlite://")
    for i, p in enumerate(["/p/a/1.jpg", "/p/a/sub/2.jpg", "/p/ab/3.jpg", "/p/a.jpg"]):
        cat.write(Changes(upserts=[(_fields(p, str(i)), _vec(i))]))
    assert sorted(cat.entries_under("/p/a")) == ["/p/a/1.jpg", "/p/a/sub/2.jpg"]
    assert len(cat.ids_for_paths(["/p/a"])) == 2
    assert len(cat.ids_for_paths(["/p/a.jpg"])) == 1


def test_iter_vectors_in_chunks_covers_everything() -> None:
    cat = Catalog("sqlite://")
    cat.write(Changes(upserts=[(_fields(f"/p/{i}.jpg", str(i)), _vec(i)) for i in range(25)]))
    chunks = list(cat.iter_vectors(8, chunk=10))
    assert [len(ids) for ids, _ in chunks] == [10, 10, 5]
    ids = np.concatenate([i for i, _ in chunks])
    vecs = np.concatenate([v for _, v in chunks])
    np.testing.assert_array_equal(vecs[3], cat.vector(int(ids[3]), 8))


def test_meta_roundtrip_and_schema_guard(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    cat = Catalog(url)
    cat.set_meta(model={"model": "m", "dim": 8})
    assert Catalog(url).get_meta("model") == {"model": "m", "dim": 8}
    cat.set_meta(schema_version=99)
    with pytest.raises(StoreError, match="schema version 99"):
        Catalog(url)


def test_database_errors_become_store_errors(tmp_path) -> None:
    (tmp_path / "notadb.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="catalog database error"):
        Catalog(f"sqlite:///{tmp_path / 'notadb.sqlite'}")
