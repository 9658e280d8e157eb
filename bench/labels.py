"""What labels cost at index time: the same photos indexed without and with `--labels`, and labels added
later to a store that has none (`index --labels`: decoded again, classified, never embedded again), side
by side in one run. Prints; asserts nothing.

The feature module is the full Inception V2 and the classifier the full Inception V2 with TF-Slim's head
(tests/modules.py, seeded random weights: the cost does not depend on the weights), both compiled for this
CPU (ONNX Runtime, FP32), on corel1k's photos (384x256 JPEGs: decoding is cheap, so the model dominates).
Built from one seed, the two share their weights as tfhub.dev's feature_vector/1 and classification/1 share
TF-Slim's checkpoint, so labels come from the classifier's head in the same pass; a classifier of other
weights (another seed) has a head that does not fit the store's features and runs as a second network.

    python bench/labels.py --photos 300
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
COREL = ROOT.parent / "shared" / "data" / "corel1k"

import simsearch  # noqa: E402

FP32 = simsearch.Settings(precision="fp32")  # not auto: choosing a precision for a new store is not per-photo work


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=300)
    args = ap.parse_args()
    photos = sorted(COREL.glob("images/*.jpg"))[: args.photos] or sorted(COREL.rglob("*.jpg"))[: args.photos]
    if not photos:
        sys.exit(f"Corel-1k not found at {COREL} (../shared beside the checkout)")
    print(describe())
    from tests import modules

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        features = modules.build_tf1_hub_module(work / "inception_v2", modules.inception_v2)
        classifier = modules.build_tf1_hub_module(work / "inception_v2_classifier", modules.inception_v2_classifier)
        other = modules.build_tf1_hub_module(work / "other_classifier", modules.inception_v2_classifier, seed=1)
        folder = work / "photos"
        folder.mkdir()
        for p in photos:
            shutil.copy(p, folder / p.name)
        for name, by in (("warm-up", classifier), ("warm-up 2", other), ("plain", None)):  # compiles them: not timed
            with simsearch.open(work / name, model=features, classifier=by, create=True, settings=FP32) as s:
                s.index(folder, labels=by is not None)
        rows = []
        for name, by in (("without labels", None), ("with --labels (one pass: the head)", classifier),
                         ("with --labels (a second network)", other)):
            labels = by is not None
            with simsearch.open(work / name, model=features, classifier=by, create=True, settings=FP32) as s:
                s.embedder  # loaded before the clock: model loading is not the per-photo cost
                if labels:
                    s.labels.enable()
                    s.labels.head(s.embedder)  # decided (and the classifier loaded) before the clock
                t = time.perf_counter()
                r = s.index(folder, labels=labels)
                rows.append((name, time.perf_counter() - t, r))
                assert not labels or s.stats().labels["passes"] == (1 if by is classifier else 2)
        with simsearch.open(work / "plain", classifier=classifier) as s:  # indexed before without labels
            s.labels.enable()
            s.labels.classifier
            t = time.perf_counter()
            r = s.index(folder, labels=True)
            rows.append(("labels added later", time.perf_counter() - t, r))
    base = rows[0][1] / len(photos)
    print(f"\n{len(photos)} corel1k photos; feature module and classifier: full Inception V2, ONNX Runtime FP32\n")
    print("| run | seconds | ms per photo | photos labelled | vs without labels |")
    print("|---|---|---|---|---|")
    for name, seconds, r in rows:
        per = seconds / len(photos)
        print(f"| {name} | {seconds:.1f} | {1000 * per:.1f} | {r.labelled} | x{per / base:.2f} |")
    for name, seconds, _ in rows[1:3]:
        print(f"{name}: {1000 * (seconds - rows[0][1]) / len(photos):.1f} ms more per photo at index time")


if __name__ == "__main__":
    main()
