"""The FAISS side: cosine search over unit vectors whose FAISS ids are the catalog's image ids."""

from __future__ import annotations

import hashlib

from collections.abc import Callable, Iterable
from pathlib import Path

import faiss
import numpy as np

from .errors import StoreError
from .files import atomic_write

REFINE_FACTOR = 4  # IVF candidates fetched per wanted result, then re-scored with exact vectors
# What tuning tries for product-quantised codes, which rank more coarsely: at 1M clustered vectors their
# top 320 held 0.922 of the true top 10 whatever the nprobe (4 to 32), their top 640 0.99 (bench/scale.py).
REFINE_STEPS = (4, 8, 16, 32, 48, 64, 96, 128)
IVF_KINDS = ("ivf-sq8", "ivf-pq")


def _check(vectors: np.ndarray, dim: int, what: str) -> np.ndarray:
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[1] != dim:
        raise ValueError(f"{what}: expected float32 [N, {dim}], got shape {list(np.shape(vectors))}")
    return v


class VectorIndex:
    """Inner-product search (cosine on unit vectors) with add/remove by id.

    Three kinds: `flat` (exact; FAISS IndexIDMap2 over IndexFlatIP) for small collections; `ivf-sq8`
    (inverted lists over 8-bit scalar-quantised vectors: a quarter of the memory, nprobe lists scanned
    per query) once exhaustive search gets slow; `ivf-pq` (product-quantised codes of dim/8 bytes, a
    32nd of the memory) for collections whose 8-bit vectors would not fit in memory. All take catalog
    ids and remove by id; the IVF kinds re-score `refine` x k candidates with exact vectors.
    """

    def __init__(self, dim: int, index: faiss.Index | None = None, refine: int = REFINE_FACTOR) -> None:
        self.dim = dim
        self.refine = refine
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if self._index.d != dim:
            raise StoreError(f"vector index has dimension {self._index.d}, the store says {dim}")
        self._ivf = faiss.try_extract_index_ivf(self._index)

    @property
    def kind(self) -> str:
        if self._ivf is None:
            return "flat"
        return "ivf-pq" if isinstance(faiss.downcast_index(self._ivf), faiss.IndexIVFPQ) else "ivf-sq8"

    @property
    def nprobe(self) -> int | None:
        return None if self._ivf is None else int(self._ivf.nprobe)

    @property
    def nlist(self) -> int | None:
        return None if self._ivf is None else int(self._ivf.nlist)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self._ivf is None:
            raise ValueError("nprobe is a setting of IVF indexes")
        self._ivf.nprobe = max(1, min(int(value), int(self._ivf.nlist)))

    @classmethod
    def trained_ivf(cls, dim: int, sample: np.ndarray, nlist: int, kind: str = "ivf-sq8") -> VectorIndex:
        """An empty IVF index whose coarse centroids and codes (8-bit ranges, or product-quantiser
        codebooks of dim/8 sub-vectors, 8 bits each) are learnt from sample."""
        sample = _check(sample, dim, "train")
        if len(sample) < nlist:
            raise ValueError(f"training {nlist} lists needs at least {nlist} vectors, got {len(sample)}")
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf-pq":
            if dim % 8:
                raise StoreError(f"an ivf-pq index codes dim/8 sub-vectors; dimension {dim} is not a multiple of 8")
            ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, dim // 8, 8, faiss.METRIC_INNER_PRODUCT)
        elif kind == "ivf-sq8":
            ivf = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                faiss.METRIC_INNER_PRODUCT)
        else:
            raise ValueError(f"unknown index kind {kind!r}: expected one of {', '.join(IVF_KINDS)}")
        ivf.train(sample)
        ivf.own_fields = True
        quantizer.this.disown()  # the IVF index owns and frees its quantiser
        return cls(dim, ivf)

    def empty_like(self) -> VectorIndex:
        """Same kind and training, no vectors: how an IVF index is rebuilt without training again."""
        clone = faiss.clone_index(self._index)
        clone.reset()
        other = VectorIndex(self.dim, clone, self.refine)
        if self._ivf is not None:
            other.nprobe = self.nprobe or 1
        return other

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        if self._ivf is None:
            return faiss.vector_to_array(faiss.downcast_index(self._index).id_map).astype(np.int64)
        lists = self._ivf.invlists
        parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                 for i in range(self._ivf.nlist) if lists.list_size(i)]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

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

    def search(self, queries: np.ndarray, k: int, among: np.ndarray | None = None,
               exact: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each [Q, k']; k' = min(k, candidates); best first; -1 pads a short row.

        among: restrict the search to these ids (a FAISS selector, so the result is the top k among
        them, not a post-filtered top k). exact: ids -> their full-precision vectors; an IVF index then
        fetches refine x k candidates and re-scores them exactly, which compressed codes alone cannot."""
        q = _check(queries, self.dim, "search")
        k = min(k, len(self) if among is None else len(among))
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if self._ivf is not None and exact is not None:
            _, cand = self._search(q, min(k * self.refine, len(self) if among is None else len(among)), among)
            scores = np.full((len(q), k), -np.inf, np.float32)
            ids = np.full((len(q), k), -1, np.int64)
            for r, row in enumerate(cand):
                best_scores, best_ids = rescore(q[r], row[row >= 0], exact, k)
                scores[r, : len(best_ids)], ids[r, : len(best_ids)] = best_scores, best_ids
            return scores, ids
        return self._search(q, k, among)

    def _search(self, q: np.ndarray, k: int, among: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        selector = None if among is None else faiss.IDSelectorBatch(np.ascontiguousarray(among, dtype=np.int64))
        if self._ivf is None:
            return self._index.search(q, k) if selector is None else \
                self._index.search(q, k, params=faiss.SearchParameters(sel=selector))
        nprobe, nlist = int(self._ivf.nprobe), int(self._ivf.nlist)
        scores, ids = self._index.search(q, k, params=faiss.SearchParametersIVF(sel=selector, nprobe=nprobe))
        short = (ids < 0).any(axis=1)
        while short.any() and nprobe < nlist:  # the probed lists held fewer than k: look in more of them
            nprobe = min(nprobe * 4, nlist)
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
            scores[short], ids[short] = self._index.search(q[short], k, params=params)
            short = (ids < 0).any(axis=1)
        return scores, ids

    def pairs_within(self, ids: np.ndarray, vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(a, b, score) for every stored b with score >= threshold to a query a (ids[i] for vectors[i]),
        a != b: a range search, so memory follows the number of close pairs, not N x N."""
        v = _check(vectors, self.dim, "pairs_within")
        lims, scores, found = self._index.range_search(v, float(np.nextafter(np.float32(threshold), np.float32(-1))))
        a = np.repeat(np.asarray(ids, np.int64), np.diff(lims).astype(np.int64))
        keep = a != found
        return a[keep], found[keep].astype(np.int64), scores[keep]

    def save(self, path: Path) -> str:
        """Written atomically; returns the SHA-256 of what was written, to be checked on load."""
        data = faiss.serialize_index(self._index)
        atomic_write(path, data.tobytes())
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: Path, dim: int, sha256: str | None = None) -> VectorIndex:
        """sha256: what save returned; bytes changed on disk since (bad sectors, a stray write) are refused
        here, since FAISS reads garbage vectors without complaint and every query would be silently wrong."""
        try:
            if sha256 is not None:
                digest = hashlib.sha256()
                with path.open("rb") as f:  # streamed: a large index is not held twice
                    while chunk := f.read(1 << 22):
                        digest.update(chunk)
                if digest.hexdigest() != sha256:
                        raise StoreError(f"vector index {path} is corrupt: its checksum is not the one it was saved with")
            index = faiss.read_index(str(path))
        except (RuntimeError, OSError) as exc:
            raise StoreError(f"cannot read vector index {path}: {exc}") from exc
        return cls(dim, index)


def rescore(query: np.ndarray, candidates: np.ndarray, exact: Callable[[np.ndarray], np.ndarray],
            k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top k of candidate ids for one query: (scores, ids), best first."""
    if not len(candidates):
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    scores = exact(candidates) @ query
    top = np.argsort(-scores, kind="stable")[:k]
    return scores[top], np.asarray(candidates, np.int64)[top]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each true top-k row that the found row contains."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found.tolist(), truth.tolist())]))


def without_self(found: np.ndarray, query_ids: np.ndarray, k: int) -> np.ndarray:
    """Each row's first k ids other than the query's own: a stored vector always finds itself first,
    which would flatter any recall measured with stored vectors as queries."""
    return np.stack([[i for i in row if i != q][:k] for row, q in zip(found.tolist(), query_ids.tolist())])


def tune_nprobe(index: VectorIndex, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray,
                target: float, exact: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[int, float]:
    """The smallest power-of-two nprobe whose recall@k against the exact answers reaches target;
    queries are stored vectors (query_ids), truth excludes them, and so do the answers scored."""
    nlist = index.nlist or 1
    k = truth.shape[1]
    nprobe, recall = 1, 0.0
    while True:
        index.nprobe = nprobe
        before, recall = recall, recall_at_k(without_self(index.search(queries, k + 1, exact=exact)[1], query_ids, k), truth)
        if recall >= target or nprobe >= nlist or (nprobe >= 16 and recall - before < 0.002):
            return nprobe, recall  # reached, or the codes, not the lists probed, now limit it
        nprobe = min(nprobe * 2, nlist)


def tune(index: VectorIndex, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray,
         target: float, exact: Callable[[np.ndarray], np.ndarray]) -> tuple[int, int, float]:
    """(nprobe, refine, recall): for 8-bit codes the smallest nprobe at the default refine; product codes
    rank too coarsely for that, so refine grows (more candidates re-scored exactly) until target is met.
    The best tried is returned when none meets it: the caller decides."""
    best = (1, index.refine, -1.0)
    for refine in (REFINE_STEPS if index.kind == "ivf-pq" else (REFINE_FACTOR,)):
        index.refine = refine
        nprobe, recall = tune_nprobe(index, queries, query_ids, truth, target, exact=exact)
        if recall > best[2]:
            best = (nprobe, refine, recall)
        if recall >= target:
            break
    index.nprobe, index.refine = best[0], best[1]
    return best


def exact_top_k(chunks: Iterable[tuple[np.ndarray, np.ndarray]], queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids (by inner product) for a few queries over (ids, vectors) chunks streamed from the
    catalog, so no second copy of the vectors is held; faiss' ResultHeap merges the blocks."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for ids, vecs in chunks:
        scores = queries @ np.ascontiguousarray(vecs, dtype=np.float32).T
        heap.add_result(np.ascontiguousarray(scores), np.ascontiguousarray(np.broadcast_to(ids, scores.shape)))
    heap.finalize()
    return heap.I
