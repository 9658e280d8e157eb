"""Inception V2 three ways, same weights, same batch, same threads, one run; then BF16 vs FP32.

- simsearch:  the Keras network (simsearch.models.inception_v2) in a tf.function
- module:     the same weights exported by `simsearch model import-slim`, called through hub.load
- tf-slim:    the reference graph (tf_slim.nets.inception_v2) in a TF1 session
- bf16:       the Keras network under Keras' mixed_bfloat16 policy: speed ratio and cosine to FP32

Weights are seeded random (tests/modules.py's counterpart, simsearch.models.random_inception_v2):
speed does not depend on their values. Rounds are interleaved so machine noise hits all alike.

    python bench/inception_speed.py [--batch 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe  # noqa: E402

from simsearch.embedder import import_tensorflow  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=3, help="batches per timing")
    args = parser.parse_args()
    tf, hub = import_tensorflow()
    print(describe())
    import keras

    from simsearch.models import import_slim, inception_v2, random_inception_v2, save_slim_checkpoint
    from tests.slim_reference import import_tf_slim

    x = np.random.default_rng(0).random((args.batch, 224, 224, 3), dtype=np.float32)
    tmp = Path(tempfile.mkdtemp(prefix="simsearch-inception-"))
    ckpt = tmp / "inception_v2.ckpt"
    save_slim_checkpoint(random_inception_v2(seed=0, include_top=False), ckpt)

    ours = inception_v2(ckpt)
    ours_fn = tf.function(lambda images: ours(images, training=False))
    module = hub.load(str(import_slim(ckpt, tmp / "module", include_top=False)))
    module_fn = module.signatures["image_feature_vector"]

    slim, nets = import_tf_slim()
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 224, 224, 3])
        with slim.arg_scope(nets.inception_v2_arg_scope()):
            _, end = nets.inception_v2(images, num_classes=1001, is_training=False)
        slim_out = tf.reduce_mean(end["Mixed_5c"], [1, 2])
        variables = [v for v in tf.compat.v1.global_variables() if "/Logits/" not in v.op.name]
        session = tf.compat.v1.Session(graph=graph)
        tf.compat.v1.train.Saver(variables).restore(session, str(ckpt))

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    bf16 = inception_v2(ckpt)
    keras.mixed_precision.set_global_policy("float32")
    bf16_fn = tf.function(lambda images: bf16(images, training=False))

    xt = tf.constant(x)
    runs = {
        "simsearch (Keras)": lambda: ours_fn(xt).numpy(),
        "imported module": lambda: module_fn(images=xt)["default"].numpy(),
        "tf-slim graph": lambda: session.run(slim_out, {images: x * 2 - 1}),  # TF-Slim trained on [-1, 1]
        "simsearch bf16": lambda: np.asarray(bf16_fn(xt), np.float32),
    }
    outputs = {name: fn() for name, fn in runs.items()}  # warm-up, and the vectors to compare
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            t = time.perf_counter()
            for _ in range(args.batches):
                fn()
            times[name].append(time.perf_counter() - t)
    rate = {name: args.batch * args.batches / statistics.median(t) for name, t in times.items()}

    cpu = tf.config.threading
    print(f"batch {args.batch}, {args.rounds} interleaved rounds of {args.batches} batches, "
          f"intra-op threads {cpu.get_intra_op_parallelism_threads() or 'default'}")
    for name, r in rate.items():
        print(f"{name:<20} {r:7.1f} images/s   x{r / rate['tf-slim graph']:.3f} of tf-slim")
    ref = outputs["tf-slim graph"]
    for name in ("simsearch (Keras)", "imported module"):
        print(f"{name:<20} max relative difference to tf-slim {np.abs(outputs[name] - ref).max() / np.abs(ref).max():.2e}")
    a, b = outputs["simsearch bf16"], outputs["simsearch (Keras)"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    print(f"bf16 vs fp32         speed x{rate['simsearch bf16'] / rate['simsearch (Keras)']:.3f}, "
          f"cosine min {cos.min():.5f} mean {cos.mean():.5f}")


if __name__ == "__main__":
    main()
