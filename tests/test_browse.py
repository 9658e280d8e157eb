"""Browsing the collection: GET /api/photos, newest first, a cursor per page, the same filters as queries."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import simsearch
from simsearch import CallableEmbedder
from simsearch.catalog import Changes, ImageFields
from simsearch.server import create_app

N = 57  # dated photos, some sharing a date (ties broken by file time, then id)


def _fields(i: int) -> ImageFields:
    dated = i < N
    taken = datetime(2020, 1, 1) + timedelta(hours=(i * 37) % 41) if dated else None  # repeats: ties
    folder = "/photos/a" if i % 2 else "/photos/b"
    mtime = 1_700_000_000_000_000_000 + ((i * 7919) % 101 if dated else i % 4)  # undated ties too
    return ImageFields(f"{folder}/{i:03d}.jpg", 1000 + i, mtime,
                       f"{i:064x}", 100 + i, 80, "PNG" if i % 5 == 0 else "JPEG", taken)


@pytest.fixture()
def client(tmp_path: Path, db_url: str) -> TestClient:
    """On SQLite and on PostgreSQL: dates compare as each stores them."""
    model = CallableEmbedder(lambda x: np.ones((len(x), 4), np.float32), name="flat", input_size=(8, 8))
    store = simsearch.open(tmp_path / "store", model=model, db=db_url, create=True)
    vecs = np.random.default_rng(0).normal(size=(N + 13, 4)).astype(np.float32)
    store.write(Changes(upserts=[(_fields(i), vecs[i]) for i in range(N + 13)]  # 13 undated
                        + [(ImageFields("/photos/a/broken.jpg", 5, 5, "f" * 64, error="truncated"), None)]))
    yield TestClient(create_app(store, preload=False), base_url="http://localhost")
    store.close()


def _all_pages(client: TestClient, limit: int, **params: object) -> tuple[list[dict], list[int]]:
    photos, totals, cursor = [], [], None
    for _ in range(N + 14):  # at most one page per photo: a cursor that fails to advance ends the test
        r = client.get("/api/photos", params={"limit": limit, **({"cursor": cursor} if cursor else {}), **params})
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["photos"]) <= limit
        photos += body["photos"]
        totals.append(body["total"])
        cursor = body["next"]
        if cursor is None:
            return photos, totals
    raise AssertionError(f"pages never ended: {len(photos)} photos seen")


def _expected(keep: object = lambda f: True) -> list[str]:
    rows = [f for f in map(_fields, range(N + 13)) if keep(f)]
    dated = sorted((f for f in rows if f.taken_at), key=lambda f: (f.taken_at, f.mtime_ns, int(f.sha256, 16)), reverse=True)
    undated = sorted((f for f in rows if not f.taken_at), key=lambda f: (f.mtime_ns, int(f.sha256, 16)), reverse=True)
    return [f.path for f in dated + undated]


@pytest.mark.parametrize("limit", [1, 7, 60, 500])
def test_pages_cover_the_collection_once_newest_first(client: TestClient, limit: int) -> None:
    photos, totals = _all_pages(client, limit)
    assert [p["path"] for p in photos] == _expected()  # dated by date taken, then undated by file time; no failures
    assert totals[0] == N + 13 and set(totals[1:]) <= {None}  # counted once, on the first page
    first = photos[0]
    assert first["thumbnail"] == f"/api/images/{first['id']}/thumbnail" and first["file"].endswith("/file")


def test_filters_narrow_browsing_as_they_narrow_queries(client: TestClient) -> None:
    photos, totals = _all_pages(client, 5, folder="/photos/a", format="PNG")
    want = _expected(lambda f: f.path.startswith("/photos/a/") and f.format == "PNG")
    assert want and [p["path"] for p in photos] == want and totals[0] == len(want) and set(totals[1:]) <= {None}
    until = datetime(2020, 1, 1, 20)
    photos, _ = _all_pages(client, 9, taken_until=until.isoformat(), min_pixels=120 * 80)
    want = _expected(lambda f: f.taken_at is not None and f.taken_at <= until and f.width * f.height >= 120 * 80)
    assert want and [p["path"] for p in photos] == want


@pytest.mark.parametrize("params", [{"cursor": "not-a-cursor"}, {"cursor": "fHx8"}, {"limit": 0}, {"limit": 501},
                                    {"folder": "a\x00b"}, {"min_pixels": -1}, {"taken_from": "yesterday"}])
def test_bad_parameters_are_4xx_without_echo(client: TestClient, params: dict[str, object]) -> None:
    r = client.get("/api/photos", params=params)
    assert r.status_code == 422 and "not-a-cursor" not in r.text


def test_an_empty_store_browses_to_nothing(tmp_path: Path) -> None:
    with simsearch.open(tmp_path / "empty", create=True) as store:
        r = TestClient(create_app(store, preload=False), base_url="http://localhost").get("/api/photos")
    assert r.status_code == 200 and r.json() == {"photos": [], "total": 0, "next": None}
