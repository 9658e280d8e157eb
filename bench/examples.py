"""Several examples in one query: which way of combining them retrieves best, measured on corel1k.

A query of m positive examples (and optionally negatives) is scored in two ways:
- mean:  Rocchio. The positives' unit vectors averaged, minus gamma times the negatives' average,
         normalised; one nearest-neighbour search (what `simsearch query A B --not C` does).
- max:   each photo scored by its best cosine to any positive ("the best of the per-example rankings"),
         minus gamma times its best cosine to any negative.

For every class of corel1k, examples are drawn from its 10 query photos (every m-subset taken in turn,
10 draws per class) and each query ranks the 900 database photos; average precision per query, mean over
queries (relevant: same class). Negatives: one photo from the database of the class the positives' mean
confuses most with theirs (by mean cosine), removed from the ranking like the positives.

    python bench/examples.py --model ../shared/data/mobilenet_v2_trained
    python bench/examples.py --model /path/to/inception_v2_module   # random weights: see below

Random weights see every photo alike (cosine > 0.99): run it on the trained stand-in to choose.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from simsearch.images import load_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COREL = ROOT.parent / "shared" / "data" / "corel1k"


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = relevant[order]
    if not hits.any():
        return 0.0
    ranks = np.flatnonzero(hits) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def score(db: np.ndarray, pos: np.ndarray, neg: np.ndarray, how: str, gamma: float) -> np.ndarray:
    if how == "mean":
        q = pos.mean(axis=0) - (gamma * neg.mean(axis=0) if len(neg) else 0)
        return db @ unit(q)
    s = (db @ pos.T).max(axis=1)
    return s - gamma * (db @ neg.T).max(axis=1) if len(neg) else s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT.parent / "shared" / "data" / "mobilenet_v2_trained"))
    ap.add_argument("--draws", type=int, default=10, help="example sets per class and m")
    args = ap.parse_args()
    print(describe())
    from simsearch.embedder import load_embedder

    embedder = load_embedder(args.model)
    rows = list(csv.DictReader((COREL / "labels.csv").open()))
    t = time.perf_counter()
    pixels = np.stack([load_image(COREL / r["file"], embedder.spec.input_size)[0] for r in rows])
    vecs = np.concatenate([embedder.embed(pixels[i : i + 64]) for i in range(0, len(pixels), 64)])
    print(f"{len(rows)} corel1k photos embedded by {embedder.spec.handle} in {time.perf_counter() - t:.0f} s")
    cls = np.array([int(r["class_index"]) for r in rows])
    is_db = np.array([r["split"] == "db" for r in rows])
    db, db_cls = vecs[is_db], cls[is_db]
    queries = {c: vecs[~is_db & (cls == c)] for c in sorted(set(cls))}
    centroids = {c: unit(db[db_cls == c].mean(axis=0)) for c in queries}

    def run(m: int, how: str, gamma: float, negatives: bool) -> float:
        aps = []
        for c, q in queries.items():
            rival = max((o for o in queries if o != c), key=lambda o: float(centroids[o] @ centroids[c]))
            rivals = np.flatnonzero(db_cls == rival)
            for draw, combo in enumerate(itertools.islice(itertools.combinations(range(len(q)), m), args.draws)):
                keep = np.ones(len(db), bool)
                neg = np.zeros((0, db.shape[1]), np.float32)
                if negatives:
                    j = rivals[draw % len(rivals)]
                    neg, keep[j] = db[j : j + 1], False
                s = score(db[keep], q[list(combo)], neg, how, gamma)
                aps.append(average_precision(s, db_cls[keep] == c))
        return float(np.mean(aps))

    print("mAP over 900 database photos (relevant: same class), positives from the query split:")
    print(f"  {'examples':<10} {'mean (Rocchio)':>15} {'max of rankings':>16}")
    for m in (1, 2, 3, 5):
        print(f"  {m:<10} {run(m, 'mean', 0, False):15.4f} {run(m, 'max', 0, False):16.4f}")
    print("3 positives + 1 negative from the most confused class, by gamma (0: the negative ignored):")
    for gamma in (0.0, 0.25, 0.5, 0.75, 1.0):
        print(f"  gamma {gamma:<4} {run(3, 'mean', gamma, True):15.4f} {run(3, 'max', gamma, True):16.4f}")


if __name__ == "__main__":
    main()
