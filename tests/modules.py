"""Build TF-Hub modules offline, in the formats simsearch loads, for tests and benchmarks.

These are TEST MODELS with seeded random weights, never a substitute for the real module:
- ``build_tf1_hub_module``: the TF1 Hub format of tfhub.dev's image modules (a SavedModel with
  tag sets {} and {"train"}, signatures ``default`` and ``image_feature_vector`` taking ``images``
  [N, H, W, 3] in [0,1] and returning ``default`` [N, D], plus ``tfhub_module.pb``).
- ``inception_v2``: TF-Slim's Inception V2 layer for layer (separable 7x7 stem with depth multiplier
  8, Mixed_3b..Mixed_5c, batch norm without scale, eps 0.001), variables named as in TF-Slim; the
  module takes [0,1] and feeds the network 2x - 1, as TF-Slim's checkpoints require.
- ``build_tf2_saved_model``: a plain TF2 SavedModel with a ``serving_default`` signature.
- A network that returns ``logits`` too (``tiny_classifier``) makes a classification module as tfhub.dev's
  ``.../classification/1`` are: ``default`` and ``image_classification`` give the 1001 logits,
  ``image_feature_vector`` the pooled features.

Run ``python tests/modules.py OUT_DIR [--arch inception_v2|tiny]`` to write one by hand.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # as simsearch.embedder.import_tensorflow sets it
import tensorflow as tf  # noqa: E402

v1 = tf.compat.v1
Network = Callable[[tf.Tensor, bool], dict[str, tf.Tensor]]

# ModuleDef{format: FORMAT_V3} serialised: field 1, varint 3. tensorflow-hub only checks the file exists.
_MODULE_DEF_V3 = b"\x08\x03"


def _bn_relu(x: tf.Tensor, training: bool, relu: bool = True) -> tf.Tensor:
    depth = x.shape[-1]
    with v1.variable_scope("BatchNorm"):
        beta = v1.get_variable("beta", [depth], initializer=v1.zeros_initializer())
        mean = v1.get_variable("moving_mean", [depth], initializer=v1.zeros_initializer(), trainable=False)
        var = v1.get_variable("moving_variance", [depth], initializer=v1.ones_initializer(), trainable=False)
    ones = tf.ones([depth])
    if training:
        y, _, _ = v1.nn.fused_batch_norm(x, ones, beta, epsilon=0.001, is_training=True)
    else:
        y, _, _ = v1.nn.fused_batch_norm(x, ones, beta, mean, var, epsilon=0.001, is_training=False)
    return tf.nn.relu(y) if relu else y


def conv(x: tf.Tensor, name: str, depth: int, k: int, training: bool, stride: int = 1,
         separable_multiplier: int | None = None) -> tf.Tensor:
    """slim.conv2d (batch norm, ReLU) or slim.separable_conv2d (biases, ReLU: slim's inception arg
    scope gives batch norm to conv2d only), SAME padding."""
    cin = x.shape[-1]
    with v1.variable_scope(name):
        if separable_multiplier:
            dw = v1.get_variable("depthwise_weights", [k, k, cin, separable_multiplier])
            pw = v1.get_variable("pointwise_weights", [1, 1, cin * separable_multiplier, depth])
            y = tf.nn.separable_conv2d(x, dw, pw, [1, stride, stride, 1], "SAME")
            return tf.nn.relu(tf.nn.bias_add(y, v1.get_variable("biases", [depth], initializer=v1.zeros_initializer())))
        else:
            w = v1.get_variable("weights", [k, k, cin, depth])
            y = tf.nn.conv2d(x, w, [1, stride, stride, 1], "SAME")
        return _bn_relu(y, training)


def _pool(x: tf.Tensor, kind: str, stride: int = 1) -> tf.Tensor:
    fn = tf.nn.max_pool2d if kind == "max" else tf.nn.avg_pool2d
    return fn(x, 3, stride, "SAME")


# (name, [branch0 1x1], [branch1 1x1, 3x3], [branch2 1x1, 3x3, 3x3], (branch3 pool kind, 1x1))
_MIXED = [
    ("Mixed_3b", 64, (64, 64), (64, 96, 96), ("avg", 32)),
    ("Mixed_3c", 64, (64, 96), (64, 96, 96), ("avg", 64)),
    ("Mixed_4b", 224, (64, 96), (96, 128, 128), ("avg", 128)),
    ("Mixed_4c", 192, (96, 128), (96, 128, 128), ("avg", 128)),
    ("Mixed_4d", 160, (128, 160), (128, 160, 160), ("avg", 96)),
    ("Mixed_4e", 96, (128, 192), (160, 192, 192), ("avg", 96)),
    ("Mixed_5b", 352, (192, 320), (160, 224, 224), ("avg", 128)),
    ("Mixed_5c", 352, (192, 320), (192, 224, 224), ("max", 128)),
]


def _mixed(x: tf.Tensor, spec: tuple, t: bool) -> tf.Tensor:
    name, b0, b1, b2, (pool_kind, b3) = spec
    with v1.variable_scope(name):
        with v1.variable_scope("Branch_0"):
            y0 = conv(x, "Conv2d_0a_1x1", b0, 1, t)
        with v1.variable_scope("Branch_1"):
            y1 = conv(conv(x, "Conv2d_0a_1x1", b1[0], 1, t), "Conv2d_0b_3x3", b1[1], 3, t)
        with v1.variable_scope("Branch_2"):
            y2 = conv(x, "Conv2d_0a_1x1", b2[0], 1, t)
            y2 = conv(conv(y2, "Conv2d_0b_3x3", b2[1], 3, t), "Conv2d_0c_3x3", b2[2], 3, t)
        with v1.variable_scope("Branch_3"):
            y3 = conv(_pool(x, pool_kind), "Conv2d_0b_1x1", b3, 1, t)
        return tf.concat([y0, y1, y2, y3], 3)


def _reduction(x: tf.Tensor, name: str, b0: tuple[int, int], b1: tuple[int, int, int], t: bool) -> tf.Tensor:
    with v1.variable_scope(name):
        with v1.variable_scope("Branch_0"):
            y0 = conv(conv(x, "Conv2d_0a_1x1", b0[0], 1, t), "Conv2d_1a_3x3", b0[1], 3, t, stride=2)
        with v1.variable_scope("Branch_1"):
            y1 = conv(conv(x, "Conv2d_0a_1x1", b1[0], 1, t), "Conv2d_0b_3x3", b1[1], 3, t)
            y1 = conv(y1, "Conv2d_1a_3x3", b1[2], 3, t, stride=2)
        with v1.variable_scope("Branch_2"):
            y2 = _pool(x, "max", stride=2)
        return tf.concat([y0, y1, y2], 3)


def inception_v2(images: tf.Tensor, training: bool) -> dict[str, tf.Tensor]:
    """TF-Slim inception_v2_base (depth_multiplier 1) plus global average pooling to 1024. Like the
    TF-Hub module, it takes [0,1] and scales to the [-1, 1] that TF-Slim's weights were trained on."""
    t = training
    end: dict[str, tf.Tensor] = {}
    with v1.variable_scope("InceptionV2"):
        x = conv(images * 2.0 - 1.0, "Conv2d_1a_7x7", 64, 7, t, stride=2, separable_multiplier=8)
        x = _pool(x, "max", 2)
        x = conv(x, "Conv2d_2b_1x1", 64, 1, t)
        x = conv(x, "Conv2d_2c_3x3", 192, 3, t)
        x = _pool(x, "max", 2)
        for spec in _MIXED[:2]:
            x = end[f"InceptionV2/{spec[0]}"] = _mixed(x, spec, t)
        x = end["InceptionV2/Mixed_4a"] = _reduction(x, "Mixed_4a", (128, 160), (64, 96, 96), t)
        for spec in _MIXED[2:6]:
            x = end[f"InceptionV2/{spec[0]}"] = _mixed(x, spec, t)
        x = end["InceptionV2/Mixed_5a"] = _reduction(x, "Mixed_5a", (128, 192), (192, 256, 256), t)
        for spec in _MIXED[6:]:
            x = end[f"InceptionV2/{spec[0]}"] = _mixed(x, spec, t)
    end["default"] = tf.reduce_mean(x, [1, 2])
    return end


def tiny(images: tf.Tensor, training: bool) -> dict[str, tf.Tensor]:
    """Two strided convolutions, pooled, then a linear projection so vectors are not all positive."""
    with v1.variable_scope("Tiny"):
        x = conv(images, "Conv2d_1", 16, 3, training, stride=2)
        x = conv(x, "Conv2d_2", 32, 3, training, stride=2)
        pooled = tf.concat([tf.reduce_mean(x, [1, 2]), tf.reduce_max(x, [1, 2])], 1)
        w = v1.get_variable("Logits/weights", [64, 32])
        return {"default": tf.matmul(pooled, w), "Tiny/pooled": pooled}


def tiny_classifier(images: tf.Tensor, training: bool) -> dict[str, tf.Tensor]:
    """tiny's pooled features (scaled so that photos get distinct, peaked class probabilities), then a linear
    head to ImageNet-shaped logits (1001: TF-Slim's background first), as Inception V2's head is on its
    pooled features."""
    features = 8.0 * tiny(images, training)["Tiny/pooled"]
    with v1.variable_scope("Tiny"):
        w = v1.get_variable("Logits/Conv2d_1c_1x1/weights", [64, 1001])
        b = v1.get_variable("Logits/Conv2d_1c_1x1/biases", [1001])
    return {"default": features, "logits": tf.matmul(features, w) + b}


def inception_v2_classifier(images: tf.Tensor, training: bool) -> dict[str, tf.Tensor]:
    """Inception V2 with TF-Slim's head: a 1x1 convolution of the pooled 1024 features to 1001 logits
    (InceptionV2/Logits/Conv2d_1c_1x1), as the classification module on tfhub.dev is built."""
    out = inception_v2(images, training)
    with v1.variable_scope("InceptionV2/Logits/Conv2d_1c_1x1"):
        w = v1.get_variable("weights", [1, 1, 1024, 1001])
        b = v1.get_variable("biases", [1001])
    pooled = out["default"][:, None, None, :]
    return {"default": out["default"], "logits": tf.nn.conv2d(pooled, w, 1, "VALID")[:, 0, 0, :] + b}


NETWORKS: dict[str, Network] = {"inception_v2": inception_v2, "tiny": tiny, "tiny_classifier": tiny_classifier,
                                "inception_v2_classifier": inception_v2_classifier}


def _seeded_values(variables: list[tf.Variable], seed: int) -> list[np.ndarray]:
    """He-scaled weights, small betas and plausible batch-norm statistics, from one seed."""
    rng = np.random.default_rng(seed)
    values = []
    for var in variables:
        shape = var.shape.as_list()
        name = var.op.name
        if name.endswith("moving_mean"):
            values.append(rng.normal(0.0, 0.05, shape))
        elif name.endswith("moving_variance"):
            values.append(rng.uniform(0.5, 1.5, shape))
        elif name.endswith(("beta", "biases")):
            values.append(rng.normal(0.0, 0.1, shape))
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            if "depthwise" in name:
                fan_in = shape[0] * shape[1]
            values.append(rng.normal(0.0, np.sqrt(2.0 / fan_in), shape))
    return [v.astype(np.float32) for v in values]


def _signature(images: tf.Tensor, outputs: dict[str, tf.Tensor]) -> v1.MetaGraphDef:
    info = v1.saved_model.utils.build_tensor_info
    return v1.saved_model.signature_def_utils.build_signature_def(
        inputs={"images": info(images)}, outputs={k: info(v) for k, v in outputs.items()}, method_name=""
    )


def build_tf1_hub_module(path: str | Path, network: Network = tiny, size: tuple[int, int] = (224, 224),
                         seed: int = 0) -> Path:
    """Write a TF1 Hub format module: tags {} (inference) and {"train"} (batch norm in training mode)."""
    path = Path(path)
    builder = v1.saved_model.Builder(str(path))
    for training in (False, True):
        with tf.Graph().as_default():
            images = v1.placeholder(tf.float32, [None, size[0], size[1], 3], name="images")
            with v1.variable_scope("module"):
                outputs = network(images, training)
            features = {k: v for k, v in outputs.items() if k != "logits"}
            sigs = {"default": _signature(images, features), "image_feature_vector": _signature(images, features)}
            if "logits" in outputs:  # a classification module: its primary task is the logits, as on tfhub.dev
                logits = {"default": outputs["logits"]}
                sigs |= {"default": _signature(images, logits), "image_classification": _signature(images, logits)}
            if not training:
                variables = v1.global_variables()
                with v1.Session() as sess:
                    sess.run(v1.global_variables_initializer())
                    for var, value in zip(variables, _seeded_values(variables, seed)):
                        var.load(value, sess)
                    builder.add_meta_graph_and_variables(sess, [], signature_def_map=sigs, strip_default_attrs=True)
            else:
                builder.add_meta_graph(["train"], signature_def_map=sigs, strip_default_attrs=True)
    builder.save()
    (path / "tfhub_module.pb").write_bytes(_MODULE_DEF_V3)
    return path


class _TF2Model(tf.Module):
    def __init__(self, dim: int, seed: int, igamma: bool = False) -> None:
        super().__init__()
        self.igamma = igamma
        rng = np.random.default_rng(seed)
        self.kernel = tf.Variable(rng.normal(0, 0.5, (3, 3, 3, 8)).astype(np.float32))
        self.proj = tf.Variable(rng.normal(0, 0.5, (16, dim)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        x = tf.nn.relu(tf.nn.conv2d(images, self.kernel, 2, "SAME"))
        if self.igamma:  # an op ONNX has no counterpart for: the compiled runtimes cannot run this model
            x = tf.math.igamma(x + 1.0, x + 1.0)
        pooled = tf.concat([tf.reduce_mean(x, [1, 2]), tf.reduce_max(x, [1, 2])], 1)
        return {"features": tf.matmul(pooled, self.proj)}


def build_tf2_saved_model(path: str | Path, dim: int = 24, seed: int = 0, igamma: bool = False) -> Path:
    """A plain TF2 SavedModel, spatial size left open, with a serving_default signature."""
    model = _TF2Model(dim, seed, igamma)
    tf.saved_model.save(model, str(path), signatures={"serving_default": model.__call__})
    return Path(path)


def class_probabilities(module: str | Path, pixels: np.ndarray, signature: str = "image_classification") -> np.ndarray:
    """[N, 1000]: a classification module's own logits on uint8 model inputs, through tensorflow-hub (not
    simsearch's runtimes), softmax over its 1001 classes with TF-Slim's background dropped."""
    import tensorflow_hub as hub

    images = tf.constant(np.asarray(pixels, np.float32) / np.float32(255))
    logits = hub.load(str(module)).signatures[signature](images=images)["default"].numpy().astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True))[:, 1:]


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a TF1 Hub format test module with seeded random weights.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--arch", choices=sorted(NETWORKS), default="inception_v2")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build_tf1_hub_module(args.out, NETWORKS[args.arch], (args.size, args.size), args.seed)
    print(args.out)


if __name__ == "__main__":
    main()
