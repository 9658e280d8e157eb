"""The reference implementation, tf_slim.nets.inception_v2, importable on current TensorFlow."""

from __future__ import annotations

import importlib
import sys
from typing import Any


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
