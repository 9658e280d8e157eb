"""`simsearch watch` as a user runs it: a separate process following the folder, killed and restarted."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import simsearch

from .conftest import photo

WAIT_S = 60  # a bound generous for a loaded 2-core machine; changes show within seconds


def _eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"not within {WAIT_S} s: {what}")


def _state(store: Path) -> dict[str, str | None]:
    """path -> sha256 of every indexed photo, read as another process sees it."""
    with simsearch.open(store, create=False) as s:
        return {r["path"]: r["sha256"] for r in s.catalog.records(s.catalog.vector_ids()).values()}


def _watch(store: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "simsearch", "watch", "--store", str(store), "--debounce", "0.5"],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, env=dict(os.environ))


def test_watch_follows_copies_moves_overwrites_and_deletions_and_catches_up_after_a_restart(
        tmp_path: Path, tiny_module: Path) -> None:
    folder, store, log = tmp_path / "photos", tmp_path / "store", tmp_path / "watch.log"
    for i in range(3):
        photo(folder / f"p{i}.jpg", seed=i)
    with simsearch.open(store, model=tiny_module, create=True) as s:
        s.index(folder)
    proc = _watch(store, log)
    try:
        _eventually(lambda: b"watching" in log.read_bytes(), "the watcher starts")
        shutil.copy(folder / "p0.jpg", folder / "copy.jpg")
        photo(folder / "sub" / "new.png", seed=7)
        _eventually(lambda: {str(folder / "copy.jpg"), str(folder / "sub" / "new.png")} <= set(_state(store)),
                    "a copy and a new photo are indexed")
        with simsearch.open(store, create=False) as s:  # the new photo is searchable, and finds itself first
            assert s.query(str(folder / "sub" / "new.png"), k=1)[0].path == str(folder / "sub" / "new.png")

        before = _state(store)[str(folder / "p1.jpg")]
        (folder / "p1.jpg").rename(folder / "moved.jpg")
        photo(folder / "p2.jpg", seed=42)  # overwritten with another photo
        (folder / "p0.jpg").unlink()
        _eventually(lambda: (st := _state(store)).get(str(folder / "moved.jpg")) == before
                    and str(folder / "p1.jpg") not in st and str(folder / "p0.jpg") not in st
                    and st.get(str(folder / "p2.jpg")) not in (None, before), "move, overwrite and delete")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    photo(folder / "while_down.jpg", seed=9)  # nobody watching
    (folder / "copy.jpg").unlink()
    proc = _watch(store, log)
    try:
        _eventually(lambda: str(folder / "while_down.jpg") in (st := _state(store)) and str(folder / "copy.jpg") not in st,
                    "changes made while the watcher was down")
        assert set(_state(store)) == {str(p) for p in folder.rglob("*") if p.is_file()}
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0, log.read_text()
    # a watcher runs for days: its lines say when (they had no time before)
    lines = [line for line in log.read_text().splitlines() if "watching" in line or ": " in line and "added" in line]
    assert lines and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) for line in lines), lines


def test_a_vanished_folder_removes_nothing(tmp_path: Path, tiny_module: Path) -> None:
    folder, store = tmp_path / "disk" / "photos", tmp_path / "store"
    for i in range(3):
        photo(folder / f"p{i}.jpg", seed=i)
    with simsearch.open(store, model=tiny_module, create=True) as s:
        s.index(folder)
        folder.rename(tmp_path / "unmounted")
        assert s.update() == [] and s.stats().images == 3  # skipped, said so, nothing removed
        (tmp_path / "unmounted").rename(folder)
        assert [r.unchanged for r in s.update()] == [3]
