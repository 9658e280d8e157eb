"""Which resize policy retrieves better on corel1k: the whole photo squashed, or its central crop?

Indexes the 900 `db` photos of ../shared/data/corel1k once per policy, queries with the 100 `query`
photos, and prints mean average precision and precision@10 (relevant = same class), side by side.
Beside simsearch's two policies, a third row follows TF-Slim's own evaluation preprocessing
(inception_preprocessing.preprocess_for_eval: the central 87.5% of the photo, whatever its shape,
resized bilinearly to 224x224), written here with TensorFlow's ops, independently of simsearch.

With the seeded random test module (the default here) the figures say nothing about the trained
module: they cannot choose a policy, only show that the bench runs. Run it with the real module.

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

from bench.machine import describe  # noqa: E402

from simsearch.config import RESIZE_POLICIES  # noqa: E402
from simsearch.embedder import HubEmbedder  # noqa: E402
from simsearch.evaluate import average_precision  # noqa: E402
from simsearch.images import load_image  # noqa: E402

COREL = Path(__file__).resolve().parents[2] / "shared" / "data" / "corel1k"


def slim_eval_pixels(rows: list[dict[str, str]], size: tuple[int, int]) -> np.ndarray:
    """TF-Slim's evaluation crop: float [0, 1], tf.image.central_crop(0.875), bilinear resize (its last step,
    scaling to [-1, 1], is the module's own)."""
    import tensorflow as tf
    from PIL import Image, ImageOps

    out = []
    for r in rows:
        with Image.open(COREL / r["file"]) as im:
            img = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), np.float32) / 255.0
        crop = tf.image.central_crop(img, central_fraction=0.875)
        out.append(tf.image.resize(crop[None], size, method="bilinear")[0].numpy())
    return np.stack(out)


def scores(embedder: HubEmbedder, rows: list[dict[str, str]], pixels: np.ndarray) -> dict[str, float]:
    vecs = embedder.embed(pixels)
    labels = np.array([r["class_index"] for r in rows])
    db = np.array([r["split"] == "db" for r in rows])
    order = np.argsort(-(vecs[~db] @ vecs[db].T), axis=1)
    rel = labels[db][order] == labels[~db][:, None]
    return {"mAP": float(np.mean([average_precision(r) for r in rel])), "P@10": float(rel[:, :10].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="TF-Hub handle; default: build the seeded random Inception V2 test module")
    args = parser.parse_args()
    print(describe())
    if not COREL.is_dir():
        sys.exit(f"corel1k not found at {COREL}")
    with open(COREL / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from tests.modules import build_tf1_hub_module, inception_v2

            model = str(build_tf1_hub_module(Path(tmp) / "inception_v2", inception_v2))
            print("model: full Inception V2 with SEEDED RANDOM weights (tests/modules.py): these figures cannot "
                  "choose a policy for the trained module")
        embedder = HubEmbedder(model)
        size = embedder.spec.input_size
        print(f"{'policy':<22} {'mAP':>7} {'P@10':>7} {'seconds':>8}")
        for policy in [*RESIZE_POLICIES, "tf-slim eval (87.5%)"]:
            t = time.perf_counter()
            if policy in RESIZE_POLICIES:
                pixels = np.stack([load_image(COREL / r["file"], size, policy=policy)[0] for r in rows])
            else:
                pixels = slim_eval_pixels(rows, size)
            m = scores(embedder, rows, pixels)
            print(f"{policy:<22} {m['mAP']:7.4f} {m['P@10']:7.4f} {time.perf_counter() - t:8.1f}")


if __name__ == "__main__":
    main()
