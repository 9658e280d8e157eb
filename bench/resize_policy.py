"""Which resize policy retrieves better on corel1k: the whole photo squashed, or its central crop?

Indexes the 900 `db` photos of ../shared/data/corel1k once per policy, queries with the 100 `query`
photos, and prints mean average precision and precision@10 (relevant = same class), side by side.

    python bench/resize_policy.py --model MODULE_DIR
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simsearch.config import RESIZE_POLICIES  # noqa: E402
from simsearch.embedder import HubEmbedder  # noqa: E402
from simsearch.evaluate import average_precision  # noqa: E402
from simsearch.images import load_image  # noqa: E402

COREL = Path(__file__).resolve().parents[2] / "shared" / "data" / "corel1k"


def evaluate(embedder: HubEmbedder, rows: list[dict[str, str]], policy: str) -> dict[str, float]:
    size = embedder.spec.input_size
    pixels = np.stack([load_image(COREL / r["file"], size, policy=policy)[0] for r in rows])
    vecs = embedder.embed(pixels)
    labels = np.array([r["class_index"] for r in rows])
    db = np.array([r["split"] == "db" for r in rows])
    scores = vecs[~db] @ vecs[db].T
    order = np.argsort(-scores, axis=1)
    rel = labels[db][order] == labels[~db][:, None]
    return {"mAP": float(np.mean([average_precision(r) for r in rel])), "P@10": float(rel[:, :10].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="TF-Hub handle; default: build the seeded random Inception V2 test module")
    args = parser.parse_args()
    if not COREL.is_dir():
        sys.exit(f"corel1k not found at {COREL}")
    with open(COREL / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from tests.modules import build_tf1_hub_module, inception_v2

            model = str(build_tf1_hub_module(Path(tmp) / "inception_v2", inception_v2))
            print("model: full Inception V2 with SEEDED RANDOM weights (tests/modules.py)")
        embedder = HubEmbedder(model)
        print(f"{'policy':<12} {'mAP':>7} {'P@10':>7} {'seconds':>8}")
        for policy in RESIZE_POLICIES:
            t = time.perf_counter()
            m = evaluate(embedder, rows, policy)
            print(f"{policy:<12} {m['mAP']:7.4f} {m['P@10']:7.4f} {time.perf_counter() - t:8.1f}")


if __name__ == "__main__":
    main()
