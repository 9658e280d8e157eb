"""The catalog and its FAISS index kept in step: the crash-safety rule lives here.

The rule: the catalog is the truth and holds every vector. Every batch of changes is one catalog
transaction (which bumps `vectors_version`), then the same change in the in-memory FAISS index. The
FAISS file is only a checkpoint, written atomically with the version it mirrors, at the end of every
write and from time to time during a long one. On open, a file that disagrees with the catalog
(version, kind, count or ids) is rebuilt from the catalog. So a killed run loses at most the batch in
flight, and the next run resumes from what was committed. One writer per store (an advisory lock
file, released when the process dies); readers in other threads see one committed state, because
writes and a search with its record lookup run under one lock.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .catalog import OK, Catalog, Changes, ImageFilter
from .errors import EmptyStoreError, StoreError
from .files import atomic_write
from .index import IVF_KINDS, REFINE_FACTOR, VectorIndex, exact_top_k, recall_at_k, rescore, tune, without_self
from .results import Hit, IndexSettings, OptimizeReport

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a second writer is then the user's responsibility
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
INDEX_STATE_FILE = "index.json"
TEMPLATE_FILE = "index.trained.faiss"  # the empty trained IVF index: rebuilds need no training
LOCK_FILE = "lock"
EXACT_FILTER_LIMIT = 50_000  # filters matching fewer photos are searched exactly, whatever the index
DELETE_CHUNK = 1000  # ids per delete transaction


def memory_bytes() -> int:
    """This machine's physical memory (8 GiB where the platform will not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def trained(catalog: Catalog, kind: str, sample: np.ndarray, nlist: int, queries: np.ndarray, query_ids: np.ndarray,
            truth: np.ndarray, target: float) -> tuple[VectorIndex, VectorIndex, float]:
    """An IVF index of this kind holding every stored vector, tuned; its empty trained template (for
    rebuilds without training); and the recall@10 reached."""
    index = VectorIndex.trained_ivf(sample.shape[1], sample, nlist, kind)
    template = index.empty_like()
    for ids, vecs in catalog.iter_vectors(index.dim):
        index.add(ids, vecs)
    recall = tune(index, queries, query_ids, truth, target, exact=lambda ids: catalog.vectors_for(ids, index.dim))[2]
    template.nprobe, template.refine = index.nprobe or 1, index.refine
    return index, template, recall


class Collection:
    """A store folder's catalog and FAISS index, changed together and searched together."""

    def __init__(self, root: Path, catalog: Catalog) -> None:
        self.root, self.catalog = root, catalog
        self._index: VectorIndex | None = None
        self._dim: int | None = None  # known once the store's model is: the index loads on first use
        self._lock = threading.RLock()
        self.version = 0  # the catalog's vectors_version that the in-memory index mirrors
        self._rebuilt = False
        self._saved: tuple[int, weakref.ref[VectorIndex]] | None = None  # what the files on disk hold

    # opening ----------------------------------------------------------------------------------
    @property
    def settings(self) -> IndexSettings:
        """The index kind (and, for IVF, nlist, nprobe, recall) as optimize recorded it."""
        return IndexSettings.from_meta(self.catalog.get_meta("index"))

    @property
    def is_open(self) -> bool:
        return self._index is not None or self._dim is not None

    @property
    def rebuilt(self) -> bool:
        """Whether loading the index had to rebuild it from the catalog (it loads on first use)."""
        if self._index is None and self._dim is not None:
            self.vector_index  # noqa: B018 - loads it
        return self._rebuilt

    @property
    def loaded(self) -> VectorIndex | None:
        """The index if it is in memory (None if not yet needed): what a run that changed nothing leaves."""
        return self._index

    @property
    def vector_index(self) -> VectorIndex:
        if self._index is None and self._dim is not None:
            with self._lock:
                if self._index is None:
                    self._load(self._dim)
        if self._index is None:
            raise EmptyStoreError(f"store {self.root} is empty: run `simsearch index FOLDER` first")
        return self._index

    def create(self, dim: int) -> None:
        """A new store's (empty) index, once its model is known."""
        self._dim = dim
        self._index = self._empty(dim)

    def _empty(self, dim: int) -> VectorIndex:
        """An empty index of the store's kind: flat, or the trained IVF template."""
        settings, template = self.settings, self.root / TEMPLATE_FILE
        if settings.kind == "flat" or not template.exists():
            return VectorIndex(dim)
        index = VectorIndex.load(template, dim)
        index.nprobe, index.refine = int(settings.nprobe or 1), int(settings.refine or REFINE_FACTOR)
        return index

    def open(self, dim: int, *, lazy: bool = False) -> None:
        """Load the FAISS checkpoint if it matches the catalog exactly, else rebuild it from the catalog;
        lazy: on first use instead, so that a re-run that changes nothing, stats of the catalog or a
        query by path never load (or check) the vectors."""
        self._dim = dim
        if lazy:
            self._index = None
            return
        with self._lock:
            self._load(dim)

    def _load(self, dim: int) -> None:
        self.version = int(self.catalog.get_meta("vectors_version") or 0)
        index, reason = self._checkpoint(dim)
        if index is not None:
            self._index = index
            self._saved = (self.version, weakref.ref(index))
            return
        index = self._empty(dim)
        for ids, vecs in self.catalog.iter_vectors(dim):
            index.add(ids, vecs)
        self._index = index
        if len(index) or (self.root / INDEX_FILE).exists():
            log.info("rebuilt vector index of %s from the catalog: %s", self.root, reason)
            self._rebuilt = True
            with self.try_writer() as free:
                if free:  # else a writer is at work and will checkpoint it itself
                    self.checkpoint()

    def refresh(self, dim: int) -> None:
        """Follow what another process committed since this one last looked (one version read): reload the
        checkpoint it left, or rebuild from the catalog."""
        with self._lock:
            if self._index is None:
                self._dim = dim  # not loaded yet: its first use reads what is committed then
            elif int(self.catalog.get_meta("vectors_version") or 0) != self.version:
                self.open(dim)

    def checkpoint_problem(self, dim: int) -> str | None:
        """Why the index file does not mirror the catalog (stale, corrupt, missing), or None when it does."""
        if not (self.root / INDEX_FILE).exists() and not len(self.catalog.vector_ids()):
            return None  # an empty store needs no file
        with self._lock:
            self.version = int(self.catalog.get_meta("vectors_version") or 0)
            return self._checkpoint(dim)[1] or None

    def rebuild(self, dim: int) -> None:
        """The index again from the catalog's vectors, and its file written (as a writer)."""
        with self.writer(), self._lock:
            (self.root / INDEX_FILE).unlink(missing_ok=True)
            self._load(dim)

    def _checkpoint(self, dim: int) -> tuple[VectorIndex | None, str]:
        """The index file if it mirrors the catalog, else None and why not."""
        path, state_path = self.root / INDEX_FILE, self.root / INDEX_STATE_FILE
        if not (path.exists() and state_path.exists()):
            return None, "no index file"
        try:
            state = json.loads(state_path.read_text())
            if not state.get("sha256"):
                return None, "index file has no checksum (an earlier simsearch wrote it)"
            index = VectorIndex.load(path, dim, state["sha256"])
        except (ValueError, OSError, StoreError) as exc:
            return None, f"unreadable index file ({exc})"
        ids, settings = self.catalog.vector_ids(), self.settings
        if index.kind != settings.kind:
            return None, f"index file is {index.kind}, the store uses {settings.kind}"
        if state.get("version") != self.version:
            return None, f"index file is at version {state.get('version')}, catalog at {self.version}"
        if len(index) != len(ids) or not np.array_equal(np.sort(index.ids()), np.sort(ids)):
            return None, f"index file holds {len(index)} vectors, catalog {len(ids)}"
        if index.kind != "flat":
            index.nprobe, index.refine = int(settings.nprobe or 1), int(settings.refine or REFINE_FACTOR)
        return index, ""

    # writing ----------------------------------------------------------------------------------
    def apply(self, changes: Changes) -> None:
        """One transaction in the catalog, then the same change in memory."""
        if not len(changes):
            return
        with self._lock:
            index = self.vector_index  # loaded before the write, so that it mirrors the version before it
            written = self.catalog.write(changes)
            index.remove(written.removed_ids)
            if len(written.added_ids):
                index.add(written.added_ids, written.added_vectors)
            self.version = written.version

    def delete(self, ids: list[int]) -> None:
        """Forget rows, a bounded transaction at a time."""
        for i in range(0, len(ids), DELETE_CHUNK):
            self.apply(Changes(deletes=ids[i : i + DELETE_CHUNK]))

    def checkpoint(self) -> None:
        """Write the FAISS file and the catalog version it mirrors (each atomically), unless the files
        already hold this very index at this version (an unchanged re-run writes nothing)."""
        if self._index is None:
            return
        with self._lock:
            if self._saved is not None and self._saved[0] == self.version and self._saved[1]() is self._index:
                return
            sha256 = self._index.save(self.root / INDEX_FILE)
            atomic_write(self.root / INDEX_STATE_FILE,
                         json.dumps({"version": self.version, "count": len(self._index), "sha256": sha256}).encode())
            self._saved = (self.version, weakref.ref(self._index))

    def stale_temp_files(self) -> list[Path]:
        """Half-written checkpoints of a run that was killed (atomic_write's temp files, never renamed)."""
        return sorted(p for name in (INDEX_FILE, INDEX_STATE_FILE, TEMPLATE_FILE) for p in self.root.glob(f".{name}.*.tmp"))

    def remove_stale_temp_files(self) -> int:
        """Only while holding the write lock: no other process can be writing one of them then."""
        found = self.stale_temp_files()
        for path in found:
            path.unlink(missing_ok=True)
        return len(found)

    @contextmanager
    def try_writer(self) -> Iterator[bool]:
        """Try the store's advisory write lock (released when the process dies); yields whether it was got."""
        with (self.root / LOCK_FILE).open("a+") as f:
            if fcntl is None:
                yield True
                return
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True

    @contextmanager
    def writer(self) -> Iterator[None]:
        """One writer per store (two would race on the FAISS file); checkpoints when it is done."""
        with self.try_writer() as got:
            if not got:
                raise StoreError(f"store {self.root} is being updated by another simsearch process; "
                                 f"try again when it has finished")
            self.remove_stale_temp_files()
            try:
                yield
            except BaseException:
                try:  # what was committed is safe in the catalog; a failing checkpoint must not hide why
                    self.checkpoint()
                except (StoreError, OSError) as exc:
                    log.warning("could not save the vector index file (it is rebuilt on the next open): %s", exc)
                raise
            self.checkpoint()

    # reading ----------------------------------------------------------------------------------
    def exact_vectors(self, ids: np.ndarray) -> np.ndarray:
        """Full-precision vectors from the catalog, for re-scoring an approximate index's candidates."""
        return self.catalog.vectors_for(ids, self.vector_index.dim)

    def vector(self, image_id: int) -> np.ndarray | None:
        return self.catalog.vector(image_id, self._dim if self._dim is not None else self.vector_index.dim)

    def unchanged_vector(self, path: Path) -> np.ndarray | None:
        """The stored vector of an indexed file unchanged since (same size and time): no model needed."""
        entry = self.catalog.entry_for_path(str(path.resolve()))
        if entry is None or entry.status != OK:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
            return None
        return self.vector(entry.id)

    def search(self, vec: np.ndarray, k: int, where: ImageFilter | None = None,
               among: np.ndarray | None = None) -> list[Hit]:
        """The true top k (among photos passing `where`, and among these ids if given), with their records,
        from one committed state."""
        index = self.vector_index
        with self._lock:
            if where:
                passing = self.catalog.ids_matching(where)
                among = passing if among is None else np.intersect1d(passing, among)
            if among is not None and index.kind != "flat" and len(among) <= EXACT_FILTER_LIMIT:
                scores, ids = (x[None] for x in rescore(vec, among, self.exact_vectors, k))  # selective: exact
            else:
                scores, ids = index.search(vec[None], k, among=among, exact=self.exact_vectors)
            found = [(int(i), float(sc)) for i, sc in zip(ids[0], scores[0]) if i >= 0]
            records = self.catalog.records(i for i, _ in found)
        # a row removed by another process since this one loaded the index has no record: left out
        return [Hit.from_record(records[i], score) for i, score in found if i in records]

    def close_pairs(self, threshold: float, chunk: int = 1024) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every pair of stored vectors with cosine >= threshold, a chunk of queries at a time."""
        index = self.vector_index
        for ids, vecs in self.catalog.iter_vectors(index.dim, chunk=chunk):
            with self._lock:
                yield index.pairs_within(ids, vecs, threshold)

    def neighbours(self, k: int, min_score: float,
                   chunk: int = 1024) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
        """(a, b, score, queries) for each stored vector a and its k nearest others b with score >= min_score,
        a chunk of queries at a time (an approximate index re-scores exactly), so memory follows k x chunk."""
        index = self.vector_index
        for ids, vecs in self.catalog.iter_vectors(index.dim, chunk=chunk):
            with self._lock:
                scores, found = index.search(vecs, k + 1, exact=self.exact_vectors)
            a = np.repeat(ids, found.shape[1])
            b, sc = found.ravel(), scores.ravel()
            keep = (b >= 0) & (b != a) & (sc >= min_score)
            yield a[keep], b[keep], sc[keep], len(ids)

    def cosines(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine of each pair (a[i], b[i]) of stored ids, from the catalog's exact vectors."""
        both = np.unique(np.concatenate([a, b]))
        vecs = self.exact_vectors(both)
        pos = {int(i): n for n, i in enumerate(both)}
        va = vecs[[pos[int(i)] for i in a]]
        vb = vecs[[pos[int(i)] for i in b]]
        return np.einsum("ij,ij->i", va, vb)

    # approximate index ------------------------------------------------------------------------
    def optimize(self, *, target_recall: float = 0.95, nlist: int | None = None, seed: int = 0,
                 kind: str = "auto") -> OptimizeReport:
        """Move to an IVF index trained on a sample of the stored vectors, with nprobe (and, for product
        codes, the re-scoring depth) tuned so that recall@10 against exact search reaches target_recall
        on the store's own vectors. kind: ivf-sq8, ivf-pq, or auto (ivf-sq8 while its codes take under a
        quarter of this machine's memory, else ivf-pq). Product codes that cannot reach the target on
        these vectors are refused (auto falls back to ivf-sq8): the store keeps the index it had."""
        t0 = time.perf_counter()
        dim = self.vector_index.dim
        all_ids = self.catalog.vector_ids()
        n = len(all_ids)
        if kind not in (*IVF_KINDS, "auto"):
            raise StoreError(f"unknown index kind {kind!r}: expected auto, {' or '.join(IVF_KINDS)}")
        nlist = nlist or int(min(max(16, 2 * np.sqrt(n)), 65536, n // 39))  # ~2000 lists at 1M: k-means in a minute
        if nlist < 16:  # nothing to gain: the index stays exact, and saying so is not an error
            return OptimizeReport(kind=self.vector_index.kind, nlist=0, nprobe=0, recall_at_10=1.0, vectors=n,
                                  seconds=round(time.perf_counter() - t0, 3), refine=0,
                                  note=f"{n} vectors are too few for an approximate index (it pays from about "
                                       f"{16 * 39}); exact search is fast at this size: nothing changed")
        chosen = kind if kind != "auto" else ("ivf-sq8" if n * (dim + 8) < memory_bytes() // 4 else "ivf-pq")
        rng = np.random.default_rng(seed)
        sample_ids = np.sort(rng.choice(all_ids, min(n, max(64 * nlist, 50_000)), replace=False))
        query_ids = rng.choice(all_ids, min(n, 500), replace=False)
        with self.writer():
            sample = self.catalog.vectors_for(sample_ids, dim)
            queries = self.catalog.vectors_for(query_ids, dim)
            truth = without_self(exact_top_k(self.catalog.iter_vectors(dim), queries, 11), query_ids, 10)
            index, template, recall = trained(self.catalog, chosen, sample, nlist, queries, query_ids, truth,
                                              target_recall)
            if recall < target_recall and chosen == "ivf-pq":
                if kind == "ivf-pq":
                    raise StoreError(f"ivf-pq reaches recall@10 {recall:.3f} on this store's vectors, under the "
                                     f"target {target_recall}: the store keeps its {self.vector_index.kind} index "
                                     f"(use ivf-sq8, or a lower --recall)")
                log.warning("ivf-pq reached recall@10 %.3f < %s on this store's vectors: using ivf-sq8", recall,
                            target_recall)
                index, template, recall = trained(self.catalog, "ivf-sq8", sample, nlist, queries, query_ids,
                                                  truth, target_recall)
            del sample
            settings = IndexSettings(index.kind, nlist, index.nprobe, round(recall, 4),
                                     None if index.refine == REFINE_FACTOR else index.refine)
            with self._lock:
                template.save(self.root / TEMPLATE_FILE)
                self.catalog.set_meta(index=settings.to_dict())
                self._index = index
        return OptimizeReport(settings.kind, nlist, int(index.nprobe or 1), settings.recall_at_10 or 0.0, n,
                              round(time.perf_counter() - t0, 2), index.refine)

    def recall(self, k: int = 10, queries: int = 200, seed: int = 0) -> float:
        """recall@k of the current index, as queries run it (re-scoring included), against exact search;
        stored vectors are the queries, their own ids left out."""
        dim = self.vector_index.dim
        all_ids = self.catalog.vector_ids()
        if len(all_ids) <= k:
            return 1.0
        query_ids = np.random.default_rng(seed).choice(all_ids, min(len(all_ids), queries), replace=False)
        vecs = self.catalog.vectors_for(query_ids, dim)
        truth = without_self(exact_top_k(self.catalog.iter_vectors(dim), vecs, k + 1), query_ids, k)
        with self._lock:
            found = self.vector_index.search(vecs, k + 1, exact=self.exact_vectors)[1]
        return recall_at_k(without_self(found, query_ids, k), truth)
