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
import pytest

import simsearch
from simsearch.catalog import Changes, ImageFields

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
    if proc.poll() is not None:
        assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
        pytest.skip("the indexer finished before it could be killed: this machine is too fast for 1000 photos")
    assert count >= 100, "no 100 photos committed in 2 minutes"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = _ok_count(killed_store / "catalog.sqlite")
    if at_kill == 1000:
        pytest.skip("the run committed its last photo before the kill landed: no crash was exercised")
    assert proc.returncode == -signal.SIGKILL and 100 <= at_kill < 1000, (proc.returncode, at_kill)

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


_BULK_CHILD = """
import sys, numpy as np, simsearch
from simsearch.catalog import Changes, ImageFields
from simsearch.embedder import CallableEmbedder
store, db, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = CallableEmbedder(lambda x: x.reshape(len(x), -1)[:, :256] + 1.0, name="proj", input_size=(16, 16))
vecs = np.random.default_rng(0).standard_normal((n, 256)).astype(np.float32)
rows = lambda a, b: Changes(upserts=[(ImageFields(f"/p/{i:07d}.jpg", 1, 1, f"{i:064x}"), vecs[i]) for i in range(a, b)])
with simsearch.open(store, model=model, db=db, create=True) as s:
    s.write(rows(0, 100))
    print("committed", flush=True)
    big = rows(100, n)
    print("writing", flush=True)
    s.write(big)
    print("written", flush=True)
"""


def test_sigkill_inside_one_bulk_write_leaves_the_batch_before_it(tmp_path: Path, db_url: str) -> None:
    """The whole of one large write (COPY on PostgreSQL, executemany on SQLite) is in flight when the kill
    lands: afterwards the catalog and the index hold exactly what was committed before it, and the same
    write then succeeds."""
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", _BULK_CHILD, str(store), db_url, "60100"],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip() for _ in range(2)]
    assert lines == ["committed", "writing"], proc.stderr.read() if proc.stderr else lines
    time.sleep(0.5)  # inside the write: 60,000 rows take several seconds
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rest = proc.stdout.read()
    if "written" in rest:
        pytest.skip("the bulk write finished before the kill landed: this machine is too fast for 60,000 rows")
    with simsearch.open(store, db=db_url) as s:
        ids = np.sort(s.catalog.vector_ids())
        assert s.stats().images == len(ids) == 100
        np.testing.assert_array_equal(np.sort(s.collection.vector_index.ids()), ids)
        s.write(Changes(upserts=[(ImageFields(f"/p/{i:07d}.jpg", 1, 1, f"{i:064x}"), np.ones(256, np.float32))
                                 for i in range(100, 1100)]))
        after = np.sort(s.catalog.vector_ids())
        assert len(after) == 1100 and after[:100].tolist() == ids.tolist() and after[100] > ids[-1]
        np.testing.assert_array_equal(np.sort(s.collection.vector_index.ids()), after)


def test_ctrl_c_exits_130_keeps_what_was_committed_and_resumes(tmp_path: Path, corel_images: Path,
                                                                tiny_module: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    store = tmp_path / "store"
    proc = subprocess.Popen(_index_cmd(corel_images, store, tiny_module), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and _ok_count(store / "catalog.sqlite") < 50 and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip("the indexer finished before it could be interrupted")
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, err = proc.communicate(timeout=120)
    kept = _ok_count(store / "catalog.sqlite")
    if kept == 1000:
        pytest.skip("the run committed its last photo before the interrupt landed")
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: every committed batch is kept" in err and "Traceback" not in err
    assert kept >= 50
    resumed = subprocess.run(_index_cmd(corel_images, store, tiny_module) + ["--json"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0 and f'"added": {1000 - kept}' in resumed.stdout, resumed.stderr[-2000:]
