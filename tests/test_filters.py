"""Filtered queries: every hit passes the filter, and the hits are the exact top k among those that do."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import simsearch
from simsearch import ImageFilter
from simsearch.config import Settings
from simsearch.embedder import HubEmbedder

from .conftest import DATABASES, database, photo

FORMATS = [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")]


@pytest.fixture(scope="module", params=DATABASES)
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          tiny_embedder: HubEmbedder) -> Iterator[simsearch.Store]:
    root = tmp_path_factory.mktemp("filters")
    with database(request.param, root) as url:
        yield from _filled_store(root, url, tiny_embedder)


def _filled_store(root: Path, db_url: str, tiny_embedder: HubEmbedder) -> Iterator[simsearch.Store]:
    rng = np.random.default_rng(0)
    for i in range(60):
        ext, fmt = FORMATS[i % 3]
        size = (int(rng.integers(80, 400)), int(rng.integers(80, 300)))
        save: dict[str, object] = {}
        if fmt == "JPEG" and i % 2 == 0:
            exif = Image.Exif()
            exif.get_ifd(0x8769)[0x9003] = f"20{10 + i % 12}:0{1 + i % 9}:1{i % 10} 12:00:00"
            save["exif"] = exif.tobytes()
        photo(root / "photos" / ("trips" if i % 4 else "home") / f"p{i:02d}.{ext}", seed=i, size=size, fmt=fmt, **save)
    s = simsearch.open(root / "store", model=tiny_embedder, db=db_url, settings=Settings(batch_size=8), create=True)
    s.index(root / "photos")
    yield s
    s.close()


def _store_args(store: simsearch.Store) -> list[str]:
    return ["--store", str(store.root), "--db", store.catalog.engine.url.render_as_string(hide_password=False)]


def _brute_force(store: simsearch.Store, probe: np.ndarray, f: ImageFilter, k: int) -> list[int]:
    records = store.catalog.records(store.catalog.vector_ids())
    keep = []
    for i, r in records.items():
        taken = datetime.fromisoformat(r["taken_at"]) if r["taken_at"] else None
        if f.folder and not r["path"].startswith(f.folder.rstrip("/") + "/"):
            continue
        if (f.taken_from or f.taken_until) and taken is None:
            continue
        if f.taken_from and taken < f.taken_from or f.taken_until and taken > f.taken_until:
            continue
        if f.formats and r["format"].upper() not in {x.upper() for x in f.formats}:
            continue
        if f.min_pixels and r["width"] * r["height"] < f.min_pixels:
            continue
        keep.append(i)
    scores = {i: float(store.catalog.vector(i, store.collection.vector_index.dim) @ probe) for i in keep}
    return sorted(keep, key=lambda i: -scores[i])[:k]


def test_filtered_queries_equal_brute_force(store: simsearch.Store) -> None:
    rng = np.random.default_rng(1)
    root = Path(store.stats().folders[0])
    checked = 0
    for trial in range(40):
        f = ImageFilter(
            folder=str(root / "trips") if rng.random() < 0.4 else None,
            taken_from=datetime(2012 + int(rng.integers(0, 6)), 1, 1) if rng.random() < 0.3 else None,
            taken_until=datetime(2016 + int(rng.integers(0, 6)), 6, 1) if rng.random() < 0.3 else None,
            formats=tuple(rng.choice(["jpeg", "PNG", "WEBP"], int(rng.integers(1, 3)), replace=False))
            if rng.random() < 0.5 else (),
            min_pixels=int(rng.integers(10_000, 80_000)) if rng.random() < 0.4 else None,
        )
        probe = store.catalog.vector(int(rng.integers(1, 61)), store.collection.vector_index.dim)
        k = int(rng.integers(1, 15))
        hits = store.query(probe, k=k, where=f)
        assert [h.id for h in hits] == _brute_force(store, probe, f, k), (trial, f)
        checked += bool(hits)
    assert checked >= 20  # most filters matched something


def test_filter_matching_nothing_and_relative_folder(store: simsearch.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    assert store.query(1, k=5, where=ImageFilter(min_pixels=10**9)) == []
    root = Path(store.stats().folders[0])
    monkeypatch.chdir(root)
    hits = store.query(1, k=50, where=ImageFilter(folder="home"))
    assert hits and all(h.path.startswith(str(root / "home") + "/") for h in hits)
    assert len(hits) == 15


def test_cli_filter_options(store: simsearch.Store) -> None:
    import json

    from click.testing import CliRunner

    from simsearch.cli import main

    root = Path(store.stats().folders[0])
    r = CliRunner().invoke(main, ["query", "--id", "2", *_store_args(store), "-k", "50", "--json",
                                  "--format", "png", "--format", "WEBP", "--min-pixels", "20000",
                                  "--folder", str(root / "trips")])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert hits and all(h["format"] in ("PNG", "WEBP") and h["width"] * h["height"] >= 20000
                        and "/trips/" in h["path"] for h in hits)
    r = CliRunner().invoke(main, ["query", "--id", "2", *_store_args(store), "--taken-from", "2015-01-01",
                                  "--taken-until", "2018-12-31", "-k", "60", "--json"])
    assert r.exit_code == 0, r.output
    dated = json.loads(r.stdout)
    # exactly the photos taken in 2015-2018: five of the fixture's ten dated photos (the others are from 2010)
    want = {i for i, rec in store.catalog.records(store.catalog.vector_ids()).items()
            if rec["taken_at"] and "2015" <= rec["taken_at"][:4] <= "2018"}
    assert want and {h["id"] for h in dated} == want
    bad = CliRunner().invoke(main, ["query", "--id", "2", *_store_args(store), "--taken-from", "yesterday"])
    assert bad.exit_code == 2


def test_api_filter_parameters(store: simsearch.Store) -> None:
    from fastapi.testclient import TestClient

    from simsearch.server import create_app

    client = TestClient(create_app(store), base_url="http://localhost")
    root = Path(store.stats().folders[0])
    params = {"id": 2, "k": 50, "format": ["PNG", "webp"], "min_pixels": 20000, "folder": str(root / "trips")}
    hits = client.get("/api/query", params=params).json()
    expected = store.query(2, k=50, where=ImageFilter(folder=str(root / "trips"), formats=("PNG", "webp"),
                                                      min_pixels=20000))
    assert [h["id"] for h in hits] == [h.id for h in expected] and hits
    vec = store.catalog.vector(2, store.collection.vector_index.dim).tolist()
    by_vec = client.post("/api/query/vector", params={"taken_from": "2015-01-01"}, json={"vector": vec, "k": 50})
    assert by_vec.status_code == 200
    want = {i for i, rec in store.catalog.records(store.catalog.vector_ids()).items()
            if rec["taken_at"] and rec["taken_at"] >= "2015"}
    assert want and {h["id"] for h in by_vec.json()} == want
    up = client.post("/api/query", params={"folder": str(root / "home")},
                     files={"image": ("p.jpg", (root / "trips" / "p01.png").read_bytes(), "image/png")})
    assert up.status_code == 200 and all("/home/" in h["path"] for h in up.json()) and up.json()
    assert client.get("/api/query", params={"id": 2, "min_pixels": 0}).status_code == 422
    assert client.get("/api/query", params={"id": 2, "folder": "/../../etc"}).json() == []


def test_a_date_until_is_the_whole_day_in_the_library_the_cli_and_the_api(tmp_path: Path, db_url: str) -> None:
    """Photos taken just after midnight, late that evening, and a second into the next day: "until 2018-12-31"
    keeps the first two (it was parsed as midnight and lost the evening's photo), a moment keeps its meaning."""
    import json
    from datetime import date

    from click.testing import CliRunner
    from fastapi.testclient import TestClient

    from simsearch import CallableEmbedder
    from simsearch.catalog import Changes, ImageFields
    from simsearch.cli import main
    from simsearch.server import create_app

    taken = {"night.jpg": datetime(2018, 12, 31, 0, 0, 0), "evening.jpg": datetime(2018, 12, 31, 23, 30),
             "new-year.jpg": datetime(2019, 1, 1, 0, 0, 1), "before.jpg": datetime(2018, 12, 30, 23, 59, 59)}
    model = CallableEmbedder(lambda x: np.ones((len(x), 4), np.float32), name="flat", input_size=(8, 8))
    vec = np.array([1, 0, 0, 0], np.float32)
    with simsearch.open(tmp_path / "store", model=model, db=db_url, create=True) as store:
        store.write(Changes(upserts=[(ImageFields(f"/p/{name}", 1, 1, name.ljust(64, "0"), 10, 10, "JPEG", when), vec)
                                     for name, when in taken.items()]))
        names = lambda hits: sorted(Path(h.path if hasattr(h, "path") else h["path"]).name for h in hits)  # noqa: E731
        day = {"evening.jpg", "night.jpg"}
        assert names(store.query(vec, k=10, where=ImageFilter(taken_until=date(2018, 12, 31)))) == sorted(day | {"before.jpg"})
        assert names(store.query(vec, k=10, where=ImageFilter(taken_from=date(2018, 12, 31),
                                                              taken_until=date(2018, 12, 31)))) == sorted(day)
        assert names(store.query(vec, k=10, where=ImageFilter(taken_until=datetime(2018, 12, 31)))) == \
            ["before.jpg", "night.jpg"]  # a moment stays a moment
        r = CliRunner().invoke(main, ["query", "--id", "1", *_store_args(store), "--taken-from", "2018-12-31",
                                      "--taken-until", "2018-12-31", "--json"])
        assert r.exit_code == 0, r.output
        assert names(json.loads(r.stdout)) == sorted(day)
        client = TestClient(create_app(store, preload=False), base_url="http://localhost")
        got = client.get("/api/photos", params={"taken_from": "2018-12-31", "taken_until": "2018-12-31"}).json()
        assert names(got["photos"]) == sorted(day)
        got = client.get("/api/query", params={"id": 1, "taken_until": "2018-12-31T12:00"}).json()
        assert names(got) == ["before.jpg", "night.jpg"]
        assert client.get("/api/photos", params={"taken_until": "31/12/2018"}).status_code == 422
