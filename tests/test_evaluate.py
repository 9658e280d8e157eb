"""`simsearch eval`: mAP and precision@k, checked against a naive computation written independently."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import simsearch
from simsearch.cli import main
from simsearch.config import Settings
from simsearch.embedder import HubEmbedder
from simsearch.evaluate import Labels, evaluate

from .conftest import photo


def _naive(store: simsearch.Store, classes: dict[str, str], queries: list[str], database: list[str], k: int) -> tuple[float, float]:
    vec = {p: store.catalog.vector(store.catalog.entry_for_path(p).id, store.collection.vector_index.dim) for p in set(queries) | set(database)}
    aps, pks = [], []
    for q in queries:
        ranked = sorted((p for p in database if p != q), key=lambda p: -float(vec[q] @ vec[p]))
        hits, precisions = 0, []
        for rank, p in enumerate(ranked, 1):
            if classes[p] == classes[q]:
                hits += 1
                precisions.append(hits / rank)
        aps.append(sum(precisions) / len(precisions) if precisions else 0.0)
        pks.append(sum(classes[p] == classes[q] for p in ranked[:k]) / k)
    return float(np.mean(aps)), float(np.mean(pks))


def test_class_folders_leave_one_out(tmp_path: Path, tiny_embedder: HubEmbedder) -> None:
    root = tmp_path / "labelled"
    for c, name in enumerate(["a", "b", "c"]):
        for i in range(5):
            photo(root / name / f"{i}.png", seed=100 * c + i)
    (root / "broken.png").write_text("not in a class folder and not an image")
    with simsearch.open(tmp_path / "s", model=tiny_embedder, settings=Settings(batch_size=4), create=True) as store:
        store.index(root)
        labels = Labels.from_folder(root)
        assert len(labels.classes) == 15 and labels.queries is None
        report = evaluate(store, labels, k=3)
        paths = sorted(labels.classes)
        assert (report.queries, report.database, report.missing) == (15, 15, 0)
        m, p = _naive(store, labels.classes, paths, paths, 3)
        assert report.mean_average_precision == pytest.approx(m) and report.precision_at_k == pytest.approx(p)


def test_corel_labels_csv_through_the_cli(tmp_path: Path, corel_images: Path, tiny_embedder: HubEmbedder) -> None:
    csv_path = corel_images.parent / "labels.csv"
    with simsearch.open(tmp_path / "s", model=tiny_embedder, create=True) as store:
        store.index(corel_images)
        labels = Labels.from_csv(csv_path)
        with csv_path.open() as f:
            rows = list(csv.DictReader(f))
        queries = [str((csv_path.parent / r["file"]).resolve()) for r in rows if r["split"] == "query"][:20]
        database = [str((csv_path.parent / r["file"]).resolve()) for r in rows if r["split"] == "db"]
        m, p = _naive(store, labels.classes, queries, database, 10)
        sub = Labels({q: labels.classes[q] for q in queries} | {d: labels.classes[d] for d in database}, frozenset(queries))
        report = evaluate(store, sub, k=10)
        assert (report.queries, report.database) == (20, 900)
        assert report.mean_average_precision == pytest.approx(m) and report.precision_at_k == pytest.approx(p)
        every = [str((csv_path.parent / r["file"]).resolve()) for r in rows if r["split"] == "query"]
        full_m, full_p = _naive(store, labels.classes, every, database, 10)  # what the CLI must print

    r = CliRunner().invoke(main, ["eval", str(csv_path), "--store", str(tmp_path / "s"), "--json"])
    assert r.exit_code == 0, r.output
    full = json.loads(r.stdout)
    assert (full["queries"], full["database"], full["k"], full["missing"]) == (100, 900, 10, 0)
    # two photos whose scores differ only in float32 rounding (the CLI's matrix product sums in another
    # order than the reference's dot products) may rank either way: one such swap moved mAP by 1.8e-6 on an
    # AVX-512 AMD EPYC; precision@k, counted in whole hits, stays exact
    assert full["mean_average_precision"] == pytest.approx(full_m, abs=1e-5)
    assert full["precision_at_k"] == pytest.approx(full_p)
    text = CliRunner().invoke(main, ["eval", str(csv_path), "--store", str(tmp_path / "s"), "-k", "5"]).output
    assert text.startswith("mAP ") and "P@5" in text and "100 queries, 900 in the database" in text
