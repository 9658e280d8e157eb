"""Retrieval quality of a store on labelled photos: mean average precision and precision@k.

Labels come from class subfolders, or from a CSV like corel1k's `labels.csv` (file, class, and an
optional split of `db` photos to search and `query` photos to search with). Without a split every
photo queries all the others. Relevant = same class; the query itself is never counted.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import NotFoundError, QueryError, StoreError
from .formats import find_images
from .results import Result
from .store import Store


@dataclass(frozen=True)
class EvalReport(Result):
    queries: int
    database: int
    k: int
    mean_average_precision: float
    precision_at_k: float
    missing: int  # labelled photos that are not indexed (failed, or outside the store)


@dataclass(frozen=True)
class Labels:
    classes: dict[str, str]  # absolute path -> class
    queries: frozenset[str] | None  # None: every photo queries the rest

    @classmethod
    def from_folder(cls, root: str | os.PathLike[str]) -> Labels:
        root = Path(root).expanduser().resolve()
        classes = {str(p): p.relative_to(root).parts[0] for p in find_images(root) if len(p.relative_to(root).parts) > 1}
        if not classes:
            raise NotFoundError(f"{root} has no photos in class subfolders")
        return cls(classes, None)

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> Labels:
        """Columns `file` (relative to the CSV's folder) and `class`; an optional `split` of db/query."""
        path = Path(path).expanduser().resolve()
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"file", "class"} <= set(rows[0]):
            raise StoreError(f"{path} needs the columns file and class (and optionally split)")
        classes = {str((path.parent / r["file"]).resolve()): r["class"] for r in rows}
        has_split = "split" in rows[0]
        queries = frozenset(str((path.parent / r["file"]).resolve()) for r in rows if r["split"] == "query") if has_split else None
        return cls(classes, queries)


def average_precision(relevant: np.ndarray) -> float:
    """AP of one ranked list of booleans, over all relevant items in it."""
    if not relevant.any():
        return 0.0
    hits = np.cumsum(relevant)
    return float((hits / np.arange(1, len(relevant) + 1))[relevant].mean())


def stored_vectors(store: Store, paths: Iterable[str]) -> dict[str, np.ndarray]:
    """Stored vectors of these indexed paths (absolute, as catalogued); paths not indexed are left out."""
    out = {}
    for path in paths:
        entry = store.catalog.entry_for_path(path)
        vec = None if entry is None else store.collection.vector(entry.id)
        if vec is not None:
            out[path] = vec
    return out


def evaluate(store: Store, labels: Labels, k: int = 10) -> EvalReport:
    """Exact ranking of the database by cosine for each query, from the vectors the store holds."""
    found = stored_vectors(store, labels.classes)
    if not found:
        raise NotFoundError("none of the labelled photos is indexed in this store: index their folder first")
    database = [p for p in found if labels.queries is None or p not in labels.queries]
    queries = [p for p in found if labels.queries is None or p in labels.queries]
    if not queries or not database:
        raise QueryError(f"{len(queries)} query photos and {len(database)} database photos are indexed: "
                         f"evaluation needs at least one of each (check the labels' split column)")
    db_vecs = np.stack([found[p] for p in database])
    db_classes = np.array([labels.classes[p] for p in database])
    db_index = {p: i for i, p in enumerate(database)}
    aps, precisions = [], []
    for start in range(0, len(queries), 256):
        chunk = queries[start : start + 256]
        scores = np.stack([found[p] for p in chunk]) @ db_vecs.T
        for row, path in zip(scores, chunk):
            if path in db_index:
                row[db_index[path]] = -np.inf  # never retrieve the query itself
            order = np.argsort(-row, kind="stable")
            if path in db_index:
                order = order[:-1]
            relevant = db_classes[order] == labels.classes[path]
            aps.append(average_precision(relevant))
            precisions.append(float(relevant[:k].mean()))
    return EvalReport(queries=len(queries), database=len(database), k=k,
                      mean_average_precision=float(np.mean(aps)), precision_at_k=float(np.mean(precisions)),
                      missing=len(labels.classes) - len(found))
