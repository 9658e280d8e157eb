"""The store end to end with the tiny TF1 Hub module: incremental indexing, failures, queries, recovery.

The tests that take `db_url` run with the catalog on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import simsearch
from simsearch.config import ModelSpec, Settings
from simsearch.embedder import HubEmbedder
from simsearch.collection import INDEX_FILE, INDEX_STATE_FILE
from simsearch.results import Progress

from .conftest import photo


class Counting:
    """Embedder wrapper that counts how many images reach the model."""

    def __init__(self, inner: HubEmbedder) -> None:
        self.inner = inner
        self.images = 0

    @property
    def spec(self) -> ModelSpec:
        return self.inner.spec

    def embed(self, images: np.ndarray) -> np.ndarray:
        self.images += len(images)
        return self.inner.embed(images)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for i in range(12):
        photo(root / ("sub" if i % 3 == 0 else "") / f"p{i:02d}.jpg", seed=i)
    return root


@pytest.fixture()
def model(tiny_embedder: HubEmbedder) -> Counting:
    return Counting(tiny_embedder)


def _open(tmp_path: Path, model: object, **kw: object) -> simsearch.Store:
    return simsearch.open(tmp_path / "store", model=model, settings=Settings(batch_size=4, workers=2), **kw, create=True)


def _consistent(store: simsearch.Store) -> None:
    """The in-memory index, the catalog's vectors and the saved checkpoint hold the same ids."""
    cat_ids = np.sort(store.catalog.vector_ids())
    np.testing.assert_array_equal(np.sort(store.collection.vector_index.ids()), cat_ids)
    assert store.stats().vectors == store.stats().images == len(cat_ids)


def test_index_then_reindex_is_a_no_op(tmp_path: Path, folder: Path, model: Counting, db_url: str) -> None:
    events: list[Progress] = []
    with _open(tmp_path, model, db=db_url) as store:
        r1 = store.index(folder, progress=events.append)
        assert (r1.added, r1.failed, r1.scanned) == (12, 0, 12)
        assert events[0].done == 0 and events[-1].done == events[-1].total == 12
        assert set(r1.timings) == {"scan", "decode", "embed", "write"}  # model given loaded: no model_load
        r2 = store.index(folder)
        assert (r2.added, r2.updated, r2.unchanged, r2.removed) == (0, 0, 12, 0)
        assert model.images == 12
        _consistent(store)
    assert json.loads((tmp_path / "store" / INDEX_STATE_FILE).read_text())["count"] == 12


def test_changed_moved_copied_and_deleted_files(tmp_path: Path, folder: Path, model: Counting, db_url: str) -> None:
    with _open(tmp_path, model, db=db_url) as store:
        store.index(folder)
        before = {h.path: h.id for h in store.query(folder / "p01.jpg", k=12)}
        model.images = 0

        photo(folder / "p01.jpg", seed=101)  # new content at the same path
        (folder / "p02.jpg").rename(folder / "renamed.jpg")  # moved
        (folder / "sub" / "p03.jpg").rename(folder / "p03-moved.jpg")  # moved across folders
        shutil.copy(folder / "p04.jpg", folder / "copy-of-p04.jpg")  # identical content at a new path
        (folder / "p05.jpg").unlink()  # deleted
        os.utime(folder / "p07.jpg", ns=(1, 1))  # touched, same content
        photo(folder / "new.png", seed=200)  # new

        r = store.index(folder)
        assert (r.added, r.updated, r.moved, r.removed, r.failed) == (2, 1, 2, 1, 0)
        assert r.unchanged == 12 - 1 - 2 - 1  # p07 counts as unchanged: only its timestamp moved
        assert model.images == 2  # only the changed and the new photo reached the model

        hits = {h.path: h for h in store.query(folder / "renamed.jpg", k=20)}
        assert hits[str(folder / "renamed.jpg")].id == before[str(folder / "p02.jpg")]  # kept its id and vector
        assert str(folder / "p05.jpg") not in hits and str(folder / "p02.jpg") not in hits
        copy = store.query(folder / "copy-of-p04.jpg", k=2)
        assert {h.path for h in copy} == {str(folder / "p04.jpg"), str(folder / "copy-of-p04.jpg")}
        assert copy[1].score == pytest.approx(1.0, abs=1e-6)
        _consistent(store)
        assert store.index(folder).unchanged == 13 and model.images == 2


def test_bad_files_are_recorded_and_never_stop_the_job(tmp_path: Path, folder: Path, model: Counting, db_url: str) -> None:
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    data = (folder / "p00.jpg").read_bytes() if (folder / "p00.jpg").exists() else (folder / "sub" / "p00.jpg").read_bytes()
    (folder / "half.jpg").write_bytes(data[: len(data) // 3])
    (folder / "dangling.jpg").symlink_to(folder / "missing.jpg")
    with _open(tmp_path, model, db=db_url) as store:
        r = store.index(folder)
        assert (r.added, r.failed) == (12, 4)
        reasons = {Path(f.path).name: f.reason for f in store.failures()}
        assert reasons["empty.jpg"] == "empty file (0 bytes)"
        assert reasons["notes.jpg"] == "not an image (format not recognised)"
        assert "truncated" in reasons["half.jpg"]
        assert reasons["dangling.jpg"].startswith("cannot read file")
        assert store.stats().failed == 4 and store.stats().images == 12

        (folder / "notes.jpg").unlink()
        photo(folder / "empty.jpg", seed=300, fmt="JPEG")  # fixed by the user
        r2 = store.index(folder)
        assert (r2.added, r2.removed) == (1, 1)
        assert {Path(f.path).name for f in store.failures()} == {"half.jpg", "dangling.jpg"}
        _consistent(store)


def test_every_kind_of_probe(tmp_path: Path, folder: Path, model: Counting) -> None:
    with _open(tmp_path, model) as store:
        store.index(folder)
        target = folder / "p04.jpg"
        by_path = store.query(target, k=3)
        assert by_path[0].path == str(target) and by_path[0].score == pytest.approx(1.0, abs=1e-5)
        tid = by_path[0].id
        img = Image.open(target)
        probes = [str(target), target.read_bytes(), img, np.asarray(img), np.asarray(img) / 255.0, tid,
                  store.catalog.vector(tid, store.collection.vector_index.dim) * 3.0]
        for probe in probes:
            hits = store.query(probe, k=3)
            assert [h.id for h in hits][:1] == [tid], type(probe)
            assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert len(store.query(tid, k=100)) == 12
        assert by_path[0].width == 160 and by_path[0].height == 120 and by_path[0].format == "JPEG"

        with pytest.raises(simsearch.NotFoundError, match="no indexed image with id 99999"):
            store.query(99999)
        with pytest.raises(simsearch.QueryError, match="must be 32 finite floats"):
            store.query(np.ones(5))
        with pytest.raises(simsearch.QueryError, match="cannot query by a dict"):
            store.query({"x": 1})
        with pytest.raises(simsearch.ImageError, match="not an image"):
            store.query(b"definitely not an image")


def test_query_on_an_empty_store(tmp_path: Path, model: Counting) -> None:
    with _open(tmp_path, model) as store:
        with pytest.raises(simsearch.EmptyStoreError, match="run `simsearch index FOLDER` first"):
            store.query(np.ones(32))


def test_store_refuses_another_model(tmp_path: Path, folder: Path, model: Counting, tf2_module: Path) -> None:
    with _open(tmp_path, model) as store:
        store.index(folder)
    with pytest.raises(simsearch.ModelMismatchError, match="was built with model .*tiny.*cannot be mixed"):
        simsearch.open(tmp_path / "store", model=tf2_module, create=True)
    with pytest.raises(simsearch.ModelMismatchError, match="resize policy 'center-crop'"):
        simsearch.open(tmp_path / "store", settings=Settings(resize="center-crop"), create=True)
    with simsearch.open(tmp_path / "store", create=True) as store:  # no model given: the store's own, loaded lazily
        assert store.stats().model == model.spec.handle
        assert store.query(folder / "p01.jpg", k=1)[0].path == str(folder / "p01.jpg")


@pytest.mark.parametrize("damage", ["delete", "stale", "garbage", "wrong-ids"])
def test_damaged_or_stale_index_file_is_rebuilt_from_the_catalog(tmp_path: Path, folder: Path, model: Counting, db_url: str,
                                                                 damage: str) -> None:
    with _open(tmp_path, model, db=db_url) as store:
        store.index(folder)
        expected = [(h.id, round(h.score, 5)) for h in store.query(folder / "p01.jpg", k=5)]
    index_file = tmp_path / "store" / INDEX_FILE
    if damage == "delete":
        index_file.unlink()
    elif damage == "stale":  # checkpoint older than the catalog
        state = json.loads((tmp_path / "store" / INDEX_STATE_FILE).read_text())
        (tmp_path / "store" / INDEX_STATE_FILE).write_text(json.dumps({**state, "version": state["version"] - 1}))
    elif damage == "garbage":
        index_file.write_bytes(b"\0" * 100)
    else:
        from simsearch.index import VectorIndex

        wrong = VectorIndex(32)
        wrong.add(np.arange(12) + 1000, np.eye(12, 32, dtype=np.float32))
        wrong.save(index_file)
    with _open(tmp_path, model, db=db_url) as store:
        assert store.rebuilt_index
        _consistent(store)
        assert [(h.id, round(h.score, 5)) for h in store.query(folder / "p01.jpg", k=5)] == expected
    with _open(tmp_path, model, db=db_url) as store:
        assert not store.rebuilt_index  # the rebuilt checkpoint was saved


def test_remove_paths_and_folders(tmp_path: Path, folder: Path, model: Counting, db_url: str) -> None:
    with _open(tmp_path, model, db=db_url) as store:
        store.index(folder)
        assert store.remove([folder / "p01.jpg"]) == 1
        assert store.remove([folder / "sub"]) == 4
        with pytest.raises(simsearch.NotFoundError, match="not in the store: .*nothing.jpg"):
            store.remove([folder / "p02.jpg", folder / "nothing.jpg"])
        assert store.stats().images == 7  # nothing removed by the refused call
        _consistent(store)
        assert store.index(folder).added == 5  # still on disk: indexing brings them back


def test_one_writer_at_a_time(tmp_path: Path, folder: Path, model: Counting) -> None:
    with _open(tmp_path, model) as first, _open(tmp_path, model) as second:
        with first.collection.writer():
            with pytest.raises(simsearch.StoreError, match="being updated by another simsearch process"):
                second.index(folder)


def test_in_memory_catalog(tmp_path: Path, folder: Path, model: Counting) -> None:
    with _open(tmp_path, model, db="sqlite://") as store:
        assert store.index(folder).added == 12
        assert store.stats().db == "sqlite://"
    assert not (tmp_path / "store" / "catalog.sqlite").exists()


def test_missing_folder(tmp_path: Path, model: Counting) -> None:
    with _open(tmp_path, model) as store:
        with pytest.raises(simsearch.NotFoundError, match="does not exist"):
            store.index(tmp_path / "nope")


def test_model_loading_is_timed_apart_and_skipped_when_nothing_changed(tmp_path: Path, folder: Path,
                                                                      tiny_module: Path) -> None:
    with simsearch.open(tmp_path / "store", model=tiny_module, create=True) as store:
        r = store.index(folder)
        assert r.added == 12 and 0 < r.timings["model_load"] < r.seconds
    with simsearch.open(tmp_path / "store", create=True) as store:
        r = store.index(folder)
        assert r.unchanged == 12 and "model_load" not in r.timings and not store.model.loaded


def test_a_reader_rebuilds_in_memory_but_leaves_the_files_to_a_busy_writer(tmp_path: Path, folder: Path,
                                                                           model: Counting) -> None:
    with _open(tmp_path, model) as store:
        store.index(folder)
    state_file = tmp_path / "store" / INDEX_STATE_FILE
    stale = {**json.loads(state_file.read_text()), "version": -1}
    with _open(tmp_path, model) as writer, writer.collection.try_writer() as got:
        assert got
        state_file.write_text(json.dumps(stale))  # as if the writer had committed past its checkpoint
        with _open(tmp_path, model) as reader:
            assert reader.rebuilt_index and len(reader.collection.vector_index) == 12  # answers from the catalog
        assert json.loads(state_file.read_text()) == stale  # but wrote nothing while the writer held the lock
    with _open(tmp_path, model) as later:
        assert later.rebuilt_index
    assert json.loads(state_file.read_text())["version"] != -1


def test_an_unchanged_rerun_rewrites_no_index_file(tmp_path: Path, folder: Path, model: Counting) -> None:
    with _open(tmp_path, model) as store:
        store.index(folder)
    files = [tmp_path / "store" / INDEX_FILE, tmp_path / "store" / INDEX_STATE_FILE]
    before = [f.stat().st_mtime_ns for f in files]
    with _open(tmp_path, model) as store:
        assert store.index(folder).unchanged == 12
    assert [f.stat().st_mtime_ns for f in files] == before  # nothing changed: the checkpoint stands
    photo(folder / "new.jpg", seed=99)
    with _open(tmp_path, model) as store:
        assert store.index(folder).added == 1
        _consistent(store)
    assert [f.stat().st_mtime_ns for f in files] != before


def test_rows_are_committed_in_bulk_by_count_or_age_not_a_model_batch_at_a_time(tmp_path: Path) -> None:
    """A fast source (a Ray merge, a fast model) writes 1,024 rows a transaction; a slow one still commits
    within `commit_every_s`. Each write reports progress once, so the progress events count the writes."""
    from simsearch.embedder import CallableEmbedder

    root = tmp_path / "tiny"
    rng = np.random.default_rng(0)
    for i in range(1100):
        path = root / f"{i // 500}" / f"p{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(path)
    model = CallableEmbedder(lambda x: x.reshape(len(x), -1)[:, :48].astype(np.float32) + 1.0, name="pixels",
                             input_size=(8, 8))
    writes: dict[float, list[int]] = {}
    for every in (3600.0, 0.0):
        events: list[Progress] = []
        settings = Settings(batch_size=8, workers=2, fingerprints=False, commit_every_s=every)
        with simsearch.open(tmp_path / f"store-{every}", model=model, settings=settings, create=True) as store:
            assert store.index(root, progress=events.append).added == 1100
            _consistent(store)
        writes[every] = [e.done for e in events if e.done]
    assert writes[3600.0] == [1024, 1100]
    assert len(writes[0.0]) >= 1100 // 8 and max(np.diff([0, *writes[0.0]])) <= 8  # every model batch at once


def test_the_faiss_file_is_checkpointed_during_a_long_run_every_save_every_s(tmp_path: Path, folder: Path,
                                                                          model: Counting) -> None:
    """At each write the progress callback reads the checkpoint on disk: with save_every_s=0 it follows the
    committed rows; with an hour it still holds what the run started from."""
    seen: dict[float, list[tuple[int, int]]] = {}
    for every in (0.0, 3600.0):
        settings = Settings(batch_size=2, workers=1, commit_every_s=0, save_every_s=every)
        store_dir = tmp_path / f"store-{every}"
        with simsearch.open(store_dir, model=model, settings=settings, create=True) as store:
            store.index(folder / "sub")  # 4 photos: the checkpoint the long run starts from
            marks: list[tuple[int, int]] = []

            def mark(p: Progress) -> None:
                if 0 < p.done < p.total:
                    marks.append((p.done, json.loads((store_dir / INDEX_STATE_FILE).read_text())["count"]))

            assert store.index(folder, progress=mark).added == 8
        seen[every] = marks
    assert len(seen[0.0]) >= 3 and all(count == 4 + done for done, count in seen[0.0])
    assert len(seen[3600.0]) >= 3 and all(count == 4 for _, count in seen[3600.0])


def test_two_stores_write_one_catalog_at_once(tmp_path: Path, tiny_embedder: HubEmbedder, db_url: str) -> None:
    """Two writers (two Store objects with their own folders and FAISS files, as two machines of a team
    would have) index different folders into one catalog at the same time, a transaction every two photos:
    every photo once, distinct ids, and each store's index agrees with the shared catalog afterwards."""
    import threading

    for side in ("a", "b"):
        for i in range(12):
            photo(tmp_path / side / f"{side}{i:02d}.jpg", seed=(100 if side == "b" else 0) + i)
    settings = Settings(batch_size=2, workers=1, commit_every_s=0)
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(side: str) -> None:
        try:
            with simsearch.open(tmp_path / f"store-{side}", model=tiny_embedder, db=db_url, settings=settings,
                                create=True) as s:
                barrier.wait(30)
                assert s.index(tmp_path / side).added == 12
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(side,)) for side in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for side in ("a", "b"):
        with simsearch.open(tmp_path / f"store-{side}", db=db_url) as s:
            ids = np.sort(s.catalog.vector_ids())
            assert len(ids) == len(np.unique(ids)) == 24
            np.testing.assert_array_equal(np.sort(s.collection.vector_index.ids()), ids)
            other = "b" if side == "a" else "a"
            probe = (tmp_path / other / f"{other}05.jpg").read_bytes()
            assert s.query(probe, k=1)[0].path == str(tmp_path / other / f"{other}05.jpg")


def test_a_folder_that_cannot_be_listed_is_a_failure_and_its_photos_stay(tmp_path: Path, tiny_embedder: HubEmbedder,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Permission denied on a subfolder (a mount gone stale, a chmod): before, a first run skipped it
    silently and a later run removed every photo it held, with nothing in failures."""
    import os

    for i in range(3):
        photo(tmp_path / "photos" / f"p{i}.jpg", seed=i)
        photo(tmp_path / "photos" / "locked" / f"q{i}.jpg", seed=10 + i)
    locked = str(tmp_path / "photos" / "locked")
    real = os.scandir

    def scandir(path: object = ".") -> object:
        if os.fspath(path) == locked:  # as the file system answers a user who may not list it
            raise PermissionError(13, "Permission denied", locked)
        return real(path)

    with simsearch.open(tmp_path / "store", model=tiny_embedder, create=True) as store:
        assert store.index(tmp_path / "photos").added == 6
        monkeypatch.setattr(os, "scandir", scandir)
        report = store.index(tmp_path / "photos")
        assert (report.removed, report.failed) == (0, 1)
        assert store.stats().images == 6  # the locked folder's photos are kept
        [failure] = store.failures()
        assert failure.path == locked and "Permission denied" in failure.reason
        again = store.index(tmp_path / "photos")
        assert (again.removed, store.stats().images) == (0, 6)
        monkeypatch.setattr(os, "scandir", real)
        back = store.index(tmp_path / "photos")
        assert (back.added, back.failed, store.stats().images, store.failures()) == (0, 0, 6, [])
    with simsearch.open(tmp_path / "fresh", model=tiny_embedder, create=True) as fresh:  # a first run says so too
        monkeypatch.setattr(os, "scandir", scandir)
        report = fresh.index(tmp_path / "photos")
        assert (report.added, report.failed) == (3, 1)


def _spinning(per_image_s: float, *, sleep: bool) -> simsearch.CallableEmbedder:
    """A model that takes per_image_s a photo, burning CPU in this thread or sleeping (a model that waits)."""
    import time

    def run(x: np.ndarray) -> np.ndarray:
        end = time.perf_counter() + per_image_s * len(x)
        if sleep:
            time.sleep(per_image_s * len(x))
        while time.perf_counter() < end:
            pass
        return x.reshape(len(x), -1)[:, :8].astype(np.float32) + 1.0

    return simsearch.CallableEmbedder(run, name=f"spin-{sleep}", input_size=(32, 32))


def test_the_report_says_where_the_cpu_went_and_how_near_the_bound_the_run_came(
        tmp_path: Path, folder: Path) -> None:
    """A model that burns 20 ms of CPU a photo is charged about that; one that sleeps as long is charged
    nearly nothing, and the run then reaches well under what the cores would allow."""
    with simsearch.open(tmp_path / "busy", model=_spinning(0.02, sleep=False),
                        settings=Settings(batch_size=4, workers=2), create=True) as store:
        busy = store.index(folder).cpu
        again = store.index(folder).cpu
    assert busy["photos"] == 12 and 15 <= busy["model_ms"] <= 40 and busy["decode_ms"] > 0
    per_photo = (busy["decode_ms"] + busy["model_ms"] + busy["other_ms"]) / 1000
    assert busy["bound_per_s"] == pytest.approx(busy["cores"] / per_photo, rel=0.02)
    assert 0 < busy["of_bound"] <= 1.2 and again == {}  # nothing embedded the second time

    with simsearch.open(tmp_path / "idle", model=_spinning(0.02, sleep=True),
                        settings=Settings(batch_size=4, workers=2), create=True) as store:
        idle = store.index(folder).cpu
    assert idle["model_ms"] < 10 and idle["per_s"] < 60  # 20 ms of waiting a photo: the cores sit idle
    assert idle["of_bound"] < 0.5 * busy["of_bound"] + 0.05
