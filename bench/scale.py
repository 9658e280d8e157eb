"""Exact vs approximate search at collection scale, side by side. Prints figures; asserts nothing.

Seeded synthetic 1024-d unit vectors, clustered (not uniform) like a photo collection's themes. For
each size: build time, index memory, p50/p99 latency of single queries (top 10), and recall@10
against exact search on held-out queries, for the exact index and the IVF-SQ8 and IVF-PQ indexes
simsearch can move to (trained and tuned as `Store.optimize` does: nprobe, and for PQ the re-scoring
depth, for recall >= --recall on stored vectors; candidates re-scored with exact vectors). Every index
answers the same held-out queries, its recall is against a numpy brute force and its memory is what FAISS
serializes. The store re-scores from its catalog, so each size also fills a SQLite catalog of that size, and
each approximate index answers the queries once more as a store does, re-scoring from that catalog: p50 with
the catalog read into the page cache just before ("warm", its residency printed) and with it dropped from the
page cache before every query ("cold", the first queries after a reboot, or a catalog larger than memory).

    python bench/scale.py --sizes 100000 1000000
    python bench/scale.py --sizes 1000000 --kinds ivf-pq --no-fetch
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cached_fraction, describe, drop_from_page_cache  # noqa: E402
from simsearch.catalog import Catalog, Changes, ImageFields  # noqa: E402
from simsearch.index import IVF_KINDS, VectorIndex, recall_at_k, tune, without_self  # noqa: E402


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int, spread: float) -> np.ndarray:
    out = np.empty((n, centres.shape[1]), np.float32)
    for s in range(0, n, 50_000):  # in chunks: no float64 copy of the whole set
        m = min(50_000, n - s)
        x = centres[rng.integers(0, len(centres), m)] + spread * rng.standard_normal((m, centres.shape[1]), np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def latencies(fn, queries: np.ndarray) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q[None])
        times.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def serialized_mb(index: VectorIndex) -> float:
    """The index's size as FAISS writes it (what the store saves and loads), counted without a copy."""
    total = 0

    def count(chunk: bytes) -> int:
        nonlocal total
        total += len(chunk)
        return len(chunk)

    faiss.write_index(index._index, faiss.PyCallbackIOWriter(count))
    return total / 2**20


def brute_force(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The true top k by a plain matrix product, a chunk of the data at a time: independent of FAISS."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for s in range(0, len(data), 100_000):
        scores = queries @ data[s : s + 100_000].T
        both_s = np.concatenate([best_s, scores], 1)
        both_i = np.concatenate([best_i, np.broadcast_to(np.arange(s, s + scores.shape[1]), scores.shape)], 1)
        top = np.argsort(-both_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(both_s, top, 1), np.take_along_axis(both_i, top, 1)
    return best_i


def store_ms(catalog: Catalog | None, path: Path, index: VectorIndex, queries: np.ndarray) -> str:
    """p50 of a query re-scored from the catalog, as a store answers it: warm, then cold (20 queries)."""
    if catalog is None:
        return "-"
    def exact(ids: np.ndarray) -> np.ndarray:
        return catalog.vectors_for(ids + 1, index.dim)  # the catalog's ids are 1..n, the index's 0..n-1
    with path.open("rb") as f:  # warm: read through once, just before
        while f.read(1 << 24):
            pass
    resident = cached_fraction([path])
    warm = latencies(partial(index.search, k=10, exact=exact), queries)[0]
    cold = []
    for q in queries[:20]:
        drop_from_page_cache([path])
        cold.append(latencies(partial(index.search, k=10, exact=exact), q[None])[0])
    shown = "?" if resident is None else f"{resident:.0%}"
    return f"{warm:.2f} ({shown} cached) / {np.median(cold):.1f}"


def filled_catalog(folder: str, data: np.ndarray) -> Catalog:
    catalog = Catalog(f"sqlite:///{folder}/c.sqlite")
    for s in range(0, len(data), 5000):
        catalog.write(Changes(upserts=[(ImageFields(f"/p/{i:09d}.jpg", 1, 1, str(i)), data[i])
                                       for i in range(s, min(len(data), s + 5000))]))
    return catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--recall", type=float, default=0.95)
    parser.add_argument("--kinds", nargs="+", default=list(IVF_KINDS), choices=IVF_KINDS)
    parser.add_argument("--no-fetch", action="store_true", help="skip the catalog and the store's timing")
    args = parser.parse_args()
    print(describe())
    print(f"faiss threads {faiss.omp_get_max_threads()}, dim {args.dim}, {args.queries} held-out queries for every "
          f"index; recall@10 against a numpy brute force; memory as serialized by FAISS; store: p50 ms of a query "
          f"re-scored from a SQLite catalog of the same size, warm and cold")
    print(f"{'size':>9} {'index':<8} {'build s':>8} {'memory MB':>10} {'p50 ms':>7} {'p99 ms':>7} {'recall@10':>9} "
          f"{'store p50 ms warm / cold':>24}  notes")
    for n in args.sizes:
        rng = np.random.default_rng(n)
        centres = rng.standard_normal((max(100, n // 1000), args.dim), np.float32)
        data = clustered(rng, centres, n, 0.6)
        queries = clustered(rng, centres, args.queries, 0.6)
        ids = np.arange(n, dtype=np.int64)
        truth = brute_force(data, queries, 10)
        with tempfile.TemporaryDirectory() as tmp:
            catalog = None if args.no_fetch else filled_catalog(tmp, data)
            catalog_file = Path(tmp) / "c.sqlite"
            t = time.perf_counter()
            flat = VectorIndex(args.dim)
            flat.add(ids, data)
            flat_build = time.perf_counter() - t
            found = flat.search(queries, 10)[1]
            p50, p99 = latencies(partial(flat.search, k=10), queries)
            print(f"{n:>9} {'flat':<8} {flat_build:8.1f} {serialized_mb(flat):10.0f} {p50:7.2f} {p99:7.2f} "
                  f"{recall_at_k(found, truth):9.3f} {'-':>24}  nothing to re-score", flush=True)

            nlist = int(min(max(16, 2 * np.sqrt(n)), 65536, n // 39))
            sample = data[np.sort(rng.choice(n, min(n, max(64 * nlist, 50_000)), replace=False))]
            exact = data.__getitem__  # the catalog's role, in memory here
            tune_ids = rng.choice(n, 500, replace=False)
            tune_truth = without_self(flat.search(data[tune_ids], 11)[1], tune_ids, 10)
            del flat
            for kind in args.kinds:
                t = time.perf_counter()
                ivf = VectorIndex.trained_ivf(args.dim, sample, nlist, kind)
                for s in range(0, n, 100_000):
                    ivf.add(ids[s : s + 100_000], data[s : s + 100_000])
                nprobe, refine, tuned = tune(ivf, data[tune_ids], tune_ids, tune_truth, args.recall, exact=exact)
                ivf_build = time.perf_counter() - t
                found = ivf.search(queries, 10, exact=exact)[1]
                p50, p99 = latencies(partial(ivf.search, k=10, exact=exact), queries)
                print(f"{n:>9} {kind:<8} {ivf_build:8.1f} {serialized_mb(ivf):10.0f} {p50:7.2f} {p99:7.2f} "
                      f"{recall_at_k(found, truth):9.3f} {store_ms(catalog, catalog_file, ivf, queries):>24}  "
                      f"nlist {nlist}, nprobe {nprobe}, {refine} x k re-scored (tuned recall {tuned:.3f})", flush=True)
                del ivf
            if catalog is not None:
                catalog.close()
        del sample, data


if __name__ == "__main__":
    main()
