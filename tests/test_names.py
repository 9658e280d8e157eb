"""File names are bytes: names that are not UTF-8 (old cameras, zip archives, Latin-1 disks) and names
holding a newline are indexed, stored, shown and served without loss, through every front end."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

import simsearch
from simsearch.cli import main
from simsearch.config import Settings
from simsearch.embedder import HubEmbedder
from simsearch.paths import display, from_catalog, to_catalog
from simsearch.server import create_app
from simsearch.watch import FolderWatcher

from .conftest import photo

LATIN1 = os.fsdecode(b"caf\xe9.jpg")  # 'café' as a Latin-1 disk spells it: not UTF-8
BAD_DIR = os.fsdecode(b"f\xeates")


def _eventually(check: object, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.05)


@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b))
def test_any_name_is_stored_as_valid_text_and_read_back_exactly(name: bytes) -> None:
    path = os.fsdecode(b"/photos/" + name)
    stored = to_catalog(path)
    stored.encode("utf-8")  # a database takes it
    assert from_catalog(stored) == path
    assert os.fsencode(from_catalog(stored)) == b"/photos/" + name


def test_names_that_are_utf8_are_stored_as_they_are() -> None:
    for name in ("/p/café.jpg", "/p/写真.heic", "/p/a\nb.jpg", "/p/😀.png"):
        assert to_catalog(name) == name
    assert display(os.fsdecode(b"/p/bad\xffname.jpg")) == "/p/bad\\xffname.jpg"


@pytest.fixture()
def odd_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    for i in range(3):
        photo(folder / f"p{i}.jpg", seed=i)
    photo(folder / LATIN1, seed=10)
    photo(folder / BAD_DIR / "x.jpg", seed=11)
    photo(folder / "line\nbreak.jpg", seed=12)
    return folder


def test_a_folder_with_names_that_are_not_utf8_indexes_whole(odd_folder: Path, tmp_path: Path, db_url: str,
                                                              tiny_embedder: HubEmbedder) -> None:
    with simsearch.open(tmp_path / "store", model=tiny_embedder, db=db_url, create=True) as store:
        report = store.index(odd_folder)
        assert (report.added, report.failed) == (6, 0)
        again = store.index(odd_folder)  # the merge of listing and catalog keeps its order with such names
        assert (again.added, again.unchanged, again.removed) == (0, 6, 0)
        paths = {h.path for h in store.query(odd_folder / "p0.jpg", k=10)}
        assert {str(odd_folder / LATIN1), str(odd_folder / BAD_DIR / "x.jpg")} <= paths
        hit = store.query(str(odd_folder / LATIN1), k=1)[0]  # the indexed photo, found by its own name
        assert hit.path == str(odd_folder / LATIN1) and hit.score > 0.999
        os.rename(odd_folder / LATIN1, odd_folder / "renamed.jpg")
        moved = store.index(odd_folder)
        assert (moved.moved, moved.removed) == (1, 0)
        assert store.remove([str(odd_folder / BAD_DIR)]) == 1
        assert store.stats().images == 5


def test_the_cli_prints_such_names_losslessly(odd_folder: Path, tmp_path: Path, tiny_module: Path) -> None:
    runner, store = CliRunner(), ["--store", str(tmp_path / "store")]
    r = runner.invoke(main, ["index", str(odd_folder), *store, "--model", str(tiny_module)])
    assert r.exit_code == 0, r.output
    assert "6 added" in r.output and "0 failed" in r.output
    probe = str(odd_folder / "p0.jpg")
    r = runner.invoke(main, ["query", probe, *store, "-k", "10", "-o", "json"])
    assert r.exit_code == 0, r.output
    r.stdout_bytes.decode("utf-8")  # valid UTF-8 JSON ...
    assert str(odd_folder / LATIN1) in {h["path"] for h in json.loads(r.stdout_bytes)}  # ... giving the name back
    # a pipe gets the file system's bytes; NUL-separated, every name is safe
    r = runner.invoke(main, ["query", probe, *store, "-k", "10", "-o", "paths", "-0"])
    assert r.exit_code == 0
    got = set(r.stdout_bytes.split(b"\0")[:-1])
    assert os.fsencode(odd_folder / LATIN1) in got and os.fsencode(odd_folder / "line\nbreak.jpg") in got
    # a line per path would split the newline's name into two paths: refused, nothing printed
    r = runner.invoke(main, ["query", probe, *store, "-k", "10", "-o", "paths"])
    assert r.exit_code == 1 and "newline" in r.output and "-0" in r.output
    assert str(odd_folder / "p1.jpg") not in r.stdout
    r = runner.invoke(main, ["remove", str(odd_folder / LATIN1), *store])
    assert r.exit_code == 0 and "removed 1" in r.output


def test_serve_api_and_watch_take_such_names(odd_folder: Path, tmp_path: Path, tiny_embedder: HubEmbedder) -> None:
    store = simsearch.open(tmp_path / "store", model=tiny_embedder, settings=Settings(batch_size=4), create=True)
    photo(tmp_path / "first" / "a.jpg", seed=30)
    store.index(odd_folder)
    watcher = FolderWatcher(store, debounce=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    client = TestClient(create_app(store, watching=watcher), base_url="http://localhost")
    try:
        _eventually(watcher.ready.is_set, "the watcher's first pass")
        photo(odd_folder / os.fsdecode(b"new\xa0shot.jpg"), seed=31)  # a new such name, while watched
        _eventually(lambda: store.stats().images == 7, "the watcher indexing a name that is not UTF-8")
        assert client.get("/healthz").json()["watching"] is True
        r = client.post("/api/index")  # the page's "update now": the whole folder, such names included
        assert r.status_code == 202
        _eventually(lambda: client.get("/api/index").json()["state"] != "running", "the index job")
        assert client.get("/api/index").json()["state"] == "done"
        photos = client.get("/api/photos", params={"limit": 100})
        assert photos.status_code == 200
        photos.content.decode("utf-8")
        by_path = {p["path"]: p for p in photos.json()["photos"]}
        latin = by_path[str(odd_folder / LATIN1)]
        served = client.get(latin["file"])
        assert served.status_code == 200 and served.content == (odd_folder / LATIN1).read_bytes()
        assert "caf%E9.jpg" in served.headers["content-disposition"]
        assert client.get(latin["thumbnail"]).status_code == 200
    finally:
        stop.set()
        thread.join(10)
        store.close()


class _Breaks(simsearch.Store):
    def index(self, *args: object, **kwargs: object) -> simsearch.IndexReport:  # type: ignore[override]
        raise RuntimeError("disk controller on fire")


def test_a_watcher_that_dies_says_so_on_healthz(tmp_path: Path, tiny_embedder: HubEmbedder) -> None:
    photo(tmp_path / "photos" / "a.jpg", seed=1)
    with simsearch.open(tmp_path / "store", model=tiny_embedder, create=True) as ok:
        ok.index(tmp_path / "photos")
    store = _Breaks(tmp_path / "store", model=tiny_embedder)
    watcher = FolderWatcher(store, debounce=0.1)
    client = TestClient(create_app(store, watching=watcher, preload=False), base_url="http://localhost")
    thread = threading.Thread(target=lambda: pytest.raises(RuntimeError, watcher.run, threading.Event()), daemon=True)
    thread.start()
    thread.join(30)
    health = client.get("/healthz").json()
    assert health["watching"] is False and "disk controller on fire" in health["watch_error"]
    store.close()
