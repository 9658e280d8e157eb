"""Exact vs approximate search at collection scale, side by side. Prints figures; asserts nothing.

Seeded synthetic 1024-d unit vectors, clustered (not uniform) like a photo collection's themes. For
each size: build time, index memory, p50/p99 latency of single queries (top 10), and recall@10
against exact search on held-out queries, for the exact index and the IVF-SQ8 and IVF-PQ indexes
simsearch can move to (trained and tuned as `Store.optimize` does: nprobe, and for PQ the re-scoring
depth, for recall >= --recall on stored vectors; candidates re-scored with exact vectors). The store re-scores from its catalog; the last line times
that fetch on a SQLite catalog.

    python bench/scale.py --sizes 100000 1000000
    python bench/scale.py --sizes 1000000 --kinds ivf-pq --no-fetch
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.duplicates import cpu  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--recall", type=float, default=0.95)
    parser.add_argument("--kinds", nargs="+", default=list(IVF_KINDS), choices=IVF_KINDS)
    parser.add_argument("--no-fetch", action="store_true", help="skip the catalog fetch timing")
    args = parser.parse_args()
    print(f"CPU: {cpu()}; faiss {faiss.__version__}, threads {faiss.omp_get_max_threads()}, dim {args.dim}, "
          f"{args.queries} held-out queries")
    print(f"{'size':>9} {'index':<8} {'build s':>8} {'memory MB':>10} {'p50 ms':>7} {'p99 ms':>7} {'recall@10':>9}  notes")
    for n in args.sizes:
        rng = np.random.default_rng(n)
        centres = rng.standard_normal((max(100, n // 1000), args.dim), np.float32)
        data = clustered(rng, centres, n, 0.6)
        queries = clustered(rng, centres, args.queries, 0.6)
        ids = np.arange(n, dtype=np.int64)

        t = time.perf_counter()
        flat = VectorIndex(args.dim)
        flat.add(ids, data)
        flat_build = time.perf_counter() - t
        truth = flat.search(queries, 10)[1]
        p50, p99 = latencies(lambda q: flat.search(q, 10), queries[:50])
        print(f"{n:>9} {'flat':<8} {flat_build:8.1f} {n * args.dim * 4 / 2**20:10.0f} {p50:7.2f} {p99:7.2f} {1.0:9.3f}")

        nlist = int(min(max(16, 2 * np.sqrt(n)), 65536, n // 39))
        sample = data[np.sort(rng.choice(n, min(n, max(64 * nlist, 50_000)), replace=False))]
        exact = lambda found: data[found]  # noqa: E731 - the catalog's role, in memory here
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
            p50, p99 = latencies(lambda q: ivf.search(q, 10, exact=exact), queries)
            memory = len(faiss.serialize_index(ivf._index)) / 2**20
            print(f"{n:>9} {kind:<8} {ivf_build:8.1f} {memory:10.0f} {p50:7.2f} {p99:7.2f} "
                  f"{recall_at_k(found, truth):9.3f}  nlist {nlist}, nprobe {nprobe}, {refine} x k re-scored "
                  f"(tuned recall {tuned:.3f})", flush=True)
            del ivf
        del sample
        del data

    if args.no_fetch:
        return
    with tempfile.TemporaryDirectory() as tmp:  # the re-scoring fetch as the store does it
        catalog = Catalog(f"sqlite:///{tmp}/c.sqlite")
        rng = np.random.default_rng(0)
        vecs = rng.standard_normal((50_000, args.dim), np.float32)
        for s in range(0, 50_000, 5000):
            catalog.write(Changes(upserts=[(ImageFields(f"/p/{i}.jpg", 1, 1, str(i)), vecs[i]) for i in range(s, s + 5000)]))
        all_ids = catalog.vector_ids()
        times = []
        for _ in range(200):
            pick = rng.choice(all_ids, 40, replace=False)
            t = time.perf_counter()
            catalog.vectors_for(pick, args.dim)
            times.append((time.perf_counter() - t) * 1000)
        print(f"catalog fetch of 40 exact vectors for re-scoring (SQLite, 50,000 rows): "
              f"p50 {np.percentile(times, 50):.2f} ms, p99 {np.percentile(times, 99):.2f} ms")


if __name__ == "__main__":
    main()
