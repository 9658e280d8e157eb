"""The reference implementation, tf_slim.nets.inception_v2, importable on current TensorFlow."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import numpy as np


def import_tf_slim() -> tuple[Any, Any]:
    """tf_slim reaches TF's legacy layers, which look for tf_keras.legacy_tf_layers; tf_keras 2.16+
    keeps them under tf_keras.src. This shim belongs to tests and benchmarks, never to the product."""
    import tf_keras.src.legacy_tf_layers as legacy

    sys.modules.setdefault("tf_keras.legacy_tf_layers", legacy)
    for sub in ("base", "convolutional", "core", "normalization", "pooling"):
        sys.modules.setdefault(f"tf_keras.legacy_tf_layers.{sub}",
                               importlib.import_module(f"tf_keras.src.legacy_tf_layers.{sub}"))
    import tf_slim
    from tf_slim.nets import inception_v2

    return tf_slim, inception_v2


def _plausible(name: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    """Non-trivial batch-norm statistics and He-scaled weights, not slim's initialisers."""
    if name.endswith("moving_mean"):
        value = rng.normal(0.0, 0.2, shape)
    elif name.endswith("moving_variance"):
        value = rng.uniform(0.3, 2.0, shape)
    elif name.endswith(("beta", "biases")):
        value = rng.normal(0.0, 0.2, shape)
    else:
        fan_in = int(np.prod(shape[:-1])) if "depthwise" not in name else shape[0] * shape[1]
        value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    return value.astype(np.float32)


def slim_reference(ckpt: str | Path, photos: np.ndarray, *, seed: int = 1234, training: bool = True) -> dict[str, Any]:
    """TF-Slim's own Inception V2 with seeded weights, saved by TF-Slim's saver in the old (V1) single-file
    format of inception_v2_2016_08_28.tar.gz, and its outputs on `photos` ([0, 1], NHWC).

    The graph is fed what TF-Slim's checkpoints were trained on, (x - 0.5) * 2, never simsearch's
    convention. Returns features (Mixed_5c averaged), logits, features_from_unit_range (the same
    graph fed [0, 1], a different function) and, with training, train_features (batch norm on batch
    statistics, as the module's {"train"} tag set computes)."""
    import tensorflow as tf

    slim, nets = import_tf_slim()
    v1 = tf.compat.v1
    ckpt = str(ckpt)
    slim_range = (photos - 0.5) * 2.0
    out: dict[str, Any] = {"ckpt": ckpt}
    for mode in (False, True) if training else (False,):
        with tf.Graph().as_default():
            images = v1.placeholder(tf.float32, [None, *photos.shape[1:]])
            with slim.arg_scope(nets.inception_v2_arg_scope()):
                logits, end = nets.inception_v2(images, num_classes=1001, is_training=mode, dropout_keep_prob=0.8)
            features = tf.reduce_mean(end["Mixed_5c"], [1, 2])  # = Logits/AvgPool_1a_7x7 at 224x224
            variables = v1.global_variables()
            saver = v1.train.Saver(variables, write_version=v1.train.SaverDef.V1)
            with v1.Session() as sess:
                if not mode:
                    rng = np.random.default_rng(seed)
                    sess.run(v1.global_variables_initializer())
                    for var in variables:
                        var.load(_plausible(var.op.name, var.shape.as_list(), rng), sess)
                    saver.save(sess, ckpt, write_meta_graph=False)
                    out["features"], out["logits"] = sess.run([features, logits], {images: slim_range})
                    out["features_from_unit_range"] = sess.run(features, {images: photos})
                else:
                    saver.restore(sess, ckpt)
                    out["train_features"] = sess.run(features, {images: slim_range})
    return out
