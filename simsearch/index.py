"""The FAISS side: cosine search over unit vectors whose FAISS ids are the catalog's image ids."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import faiss
import numpy as np

from .errors import StoreError


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename, fsync the folder: readers see old or new, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _check(vectors: np.ndarray, dim: int, what: str) -> np.ndarray:
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[1] != dim:
        raise ValueError(f"{what}: expected float32 [N, {dim}], got shape {list(np.shape(vectors))}")
    return v


class VectorIndex:
    """Exact inner-product search (cosine on unit vectors) with add/remove by id."""

    def __init__(self, dim: int, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if self._index.d != dim:
            raise StoreError(f"vector index has dimension {self._index.d}, the store says {dim}")

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(faiss.downcast_index(self._index).id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        v = _check(vectors, self.dim, "add")
        if len(ids) != len(v):
            raise ValueError(f"add: {len(ids)} ids for {len(v)} vectors")
        if len(ids):
            self._index.add_with_ids(v, ids)

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return 0
        return int(self._index.remove_ids(ids))

    def search(self, queries: np.ndarray, k: int, among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each [Q, k']; k' = min(k, candidates); best first.

        among: restrict the search to these ids (a FAISS selector, so the result is the exact top k
        among them, not a post-filtered top k)."""
        q = _check(queries, self.dim, "search")
        k = min(k, len(self) if among is None else len(among))
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if among is None:
            return self._index.search(q, k)
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(among, dtype=np.int64))
        return self._index.search(q, k, params=faiss.SearchParameters(sel=selector))

    def pairs_within(self, ids: np.ndarray, vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(a, b, score) for every stored b with score >= threshold to a query a (ids[i] for vectors[i]),
        a != b: a range search, so memory follows the number of close pairs, not N x N."""
        v = _check(vectors, self.dim, "pairs_within")
        lims, scores, found = self._index.range_search(v, float(np.nextafter(np.float32(threshold), np.float32(-1))))
        a = np.repeat(np.asarray(ids, np.int64), np.diff(lims).astype(np.int64))
        keep = a != found
        return a[keep], found[keep].astype(np.int64), scores[keep]

    def save(self, path: Path) -> None:
        atomic_write(path, faiss.serialize_index(self._index).tobytes())

    @classmethod
    def load(cls, path: Path, dim: int) -> VectorIndex:
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise StoreError(f"cannot read vector index {path}: {exc}") from exc
        return cls(dim, index)
