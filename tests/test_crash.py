"""SIGKILL an indexing process mid-run; the next run must end exactly where a clean run does."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import simsearch

ROOT = Path(__file__).resolve().parents[1]


def _index_cmd(folder: Path, store: Path, model: Path) -> list[str]:
    return [sys.executable, "-m", "simsearch", "index", str(folder), "--store", str(store), "--model", str(model),
            "--batch-size", "4", "--workers", "1"]


def _ok_count(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("select count(*) from images where status='ok'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0  # not created yet


def _snapshot(store_dir: Path) -> tuple[dict[str, int], int]:
    with simsearch.open(store_dir, create=True) as store:
        ids = np.sort(store.catalog.vector_ids())
        np.testing.assert_array_equal(np.sort(store.collection.vector_index.ids()), ids)  # index and catalog agree
        assert len(np.unique(ids)) == len(ids)
        paths = {h.path: h.id for h in store.query(int(ids[0]), k=100_000)}
        return paths, store.stats().images


def test_sigkill_then_resume_matches_a_clean_run(tmp_path: Path, corel_images: Path, tiny_module: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed_store = tmp_path / "killed"
    proc = subprocess.Popen(_index_cmd(corel_images, killed_store, tiny_module), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    count = 0
    while time.monotonic() < deadline and proc.poll() is None:
        count = _ok_count(killed_store / "catalog.sqlite")
        if count >= 100:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"indexer ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = _ok_count(killed_store / "catalog.sqlite")
    assert 100 <= at_kill < 1000, at_kill

    # reopening after the kill: the index is rebuilt from what was committed, nothing half-written
    partial, images = _snapshot(killed_store)
    assert images == len(partial) == at_kill

    resumed = subprocess.run(_index_cmd(corel_images, killed_store, tiny_module) + ["--json"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f'"added": {1000 - at_kill}' in resumed.stdout

    clean_store = tmp_path / "clean"
    clean = subprocess.run(_index_cmd(corel_images, clean_store, tiny_module), env=env, capture_output=True,
                           text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    after, images_after = _snapshot(killed_store)
    reference, images_ref = _snapshot(clean_store)
    assert images_after == images_ref == 1000
    assert set(after) == set(reference)
    for pid in partial:  # what was committed before the kill kept its id
        assert after[pid] == partial[pid]
