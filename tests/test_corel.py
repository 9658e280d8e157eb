"""Real photos, full-size Inception V2 (seeded random weights): index, query, re-index, move, delete."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import simsearch

pytestmark = pytest.mark.slow


def test_corel_index_query_and_follow_changes(tmp_path: Path, corel_images: Path, inception_module: Path) -> None:
    photos = tmp_path / "corel"
    shutil.copytree(corel_images, photos)  # a private copy we may move and delete in
    with simsearch.open(tmp_path / "store", model=inception_module, create=True) as store:
        r = store.index(photos)
        assert (r.added, r.failed, r.scanned) == (1000, 0, 1000)
        assert store.embedder.spec.dim == 1024 and store.embedder.spec.input_size == (224, 224)

        probe = tmp_path / "probe.jpg"  # a copy outside the folder: decoded and run through the model
        shutil.copy(photos / "q_0.jpg", probe)
        hits = store.query(probe, k=10)
        assert len(hits) == 10 and hits[0].path == str(photos / "q_0.jpg")
        assert hits[0].score > 0.99999 > hits[1].score  # random weights: other photos score 0.999 and more
        assert all(hits[i].score >= hits[i + 1].score for i in range(9))
        # a probe given as bytes goes through decode + model, and must land on the same vector
        assert store.query((photos / "q_0.jpg").read_bytes(), k=1)[0].id == hits[0].id

        assert store.index(photos).added == 0

        (photos / "moved").mkdir()
        for name in ("db_10.jpg", "db_20.jpg", "db_30.jpg"):
            (photos / name).rename(photos / "moved" / name)
        for name in ("db_40.jpg", "db_50.jpg"):
            (photos / name).unlink()
        r2 = store.index(photos)
        assert (r2.added, r2.updated, r2.moved, r2.removed, r2.unchanged) == (0, 0, 3, 2, 995)
        assert store.stats().images == 998
        moved = store.query((photos / "moved" / "db_10.jpg").read_bytes(), k=1)[0]  # the model, not a lookup
        assert moved.path == str(photos / "moved" / "db_10.jpg") and moved.score >= 0.999
        paths = {h.path for h in store.query(photos / "q_0.jpg", k=1000)}
        assert len(paths) == 998 and str(photos / "db_40.jpg") not in paths
        np.testing.assert_array_equal(np.sort(store.collection.vector_index.ids()), np.sort(store.catalog.vector_ids()))
