"""TF-Slim's Inception V2, layer for layer, in Keras: load the 2016 checkpoint, fine-tune, export a module.

Why our own: the TF-Hub module is in the TF1 Hub format, which TF2 cannot fine-tune, and some users
have only the TF-Slim checkpoint or no access to tfhub.dev. The network mirrors
`tf_slim.nets.inception_v2` (depth multiplier 1): a 7x7 separable stem (depthwise multiplier 8, with
biases and no batch norm, as slim's arg scope leaves it), batch norm without scale (decay 0.9997,
epsilon 0.001) after every other convolution, Mixed_3b ... Mixed_5c, global average pooling to 1024,
and an optional 1001-class 1x1-convolution head. Every variable has its TF-Slim name in
`model.slim_variables`, so a checkpoint maps onto it one to one.

Input convention: the network takes RGB in [0, 1], like the TF-Hub module, and scales it to [-1, 1]
(`x * 2 - 1`) as its first layer, because TF-Slim's Inception checkpoints were trained on [-1, 1]
(slim's inception preprocessing: subtract 0.5, multiply by 2). Feeding [0, 1] straight to the
checkpoint's weights gives other vectors (0.41 max relative error on the parity test's checkpoint).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..embedder import import_tensorflow
from ..errors import ModelError

SCOPE = "InceptionV2"
NUM_CLASSES = 1001
BN_DECAY = 0.9997
BN_EPSILON = 0.001
# Checkpoint entries that are not network weights: optimiser slots, step counters, moving averages.
_NOT_WEIGHTS = ("global_step", "/RMSProp", "/Momentum", "/ExponentialMovingAverage", "/Adam")

# (name, branch0 1x1, (branch1 1x1, 3x3), (branch2 1x1, 3x3, 3x3), (branch3 pool, 1x1))
_MIXED = {
    "Mixed_3b": (64, (64, 64), (64, 96, 96), ("avg", 32)),
    "Mixed_3c": (64, (64, 96), (64, 96, 96), ("avg", 64)),
    "Mixed_4b": (224, (64, 96), (96, 128, 128), ("avg", 128)),
    "Mixed_4c": (192, (96, 128), (96, 128, 128), ("avg", 128)),
    "Mixed_4d": (160, (128, 160), (128, 160, 160), ("avg", 96)),
    "Mixed_4e": (96, (128, 192), (160, 192, 192), ("avg", 96)),
    "Mixed_5b": (352, (192, 320), (160, 224, 224), ("avg", 128)),
    "Mixed_5c": (352, (192, 320), (192, 224, 224), ("max", 128)),
}
# (name, (branch0 1x1, 3x3/2), (branch1 1x1, 3x3, 3x3/2)); branch2 is a 3x3/2 max pool
_REDUCTION = {"Mixed_4a": ((128, 160), (64, 96, 96)), "Mixed_5a": ((128, 192), (192, 256, 256))}


def _keras() -> Any:
    import_tensorflow()
    import keras

    return keras


class _Builder:
    """Builds the functional graph and records which Keras variable each TF-Slim name is."""

    def __init__(self) -> None:
        self.keras = _keras()
        self.refs: dict[str, tuple[Any, str]] = {}  # slim name -> (layer, attribute)

    def _name(self, scope: str) -> str:
        return scope.replace("/", ".")

    def conv(self, x: Any, scope: str, depth: int, k: int, stride: int = 1) -> Any:
        """slim.conv2d in the inception arg scope: no bias, batch norm without scale, ReLU."""
        L = self.keras.layers
        full = f"{SCOPE}/{scope}"
        conv = L.Conv2D(depth, k, stride, padding="same", use_bias=False, name=self._name(full))
        bn = L.BatchNormalization(momentum=BN_DECAY, epsilon=BN_EPSILON, scale=False,
                                  name=self._name(full + "/BatchNorm"))
        self.refs[f"{full}/weights"] = (conv, "kernel")
        for attr in ("beta", "moving_mean", "moving_variance"):
            self.refs[f"{full}/BatchNorm/{attr}"] = (bn, attr)
        return L.ReLU(name=self._name(full + "/Relu"))(bn(conv(x)))

    def pool(self, x: Any, kind: str, scope: str, stride: int = 1) -> Any:
        L = self.keras.layers
        cls = L.MaxPooling2D if kind == "max" else L.AveragePooling2D
        return cls(3, stride, padding="same", name=self._name(f"{SCOPE}/{scope}"))(x)

    def stem(self, x: Any) -> Any:
        """slim.separable_conv2d outside the conv2d arg scope: biases, ReLU, no batch norm."""
        full = f"{SCOPE}/Conv2d_1a_7x7"
        sep = self.keras.layers.SeparableConv2D(64, 7, 2, padding="same", depth_multiplier=8, use_bias=True,
                                                activation="relu", name=self._name(full))
        self.refs[f"{full}/depthwise_weights"] = (sep, "depthwise_kernel")
        self.refs[f"{full}/pointwise_weights"] = (sep, "pointwise_kernel")
        self.refs[f"{full}/biases"] = (sep, "bias")
        return sep(x)

    def mixed(self, x: Any, name: str) -> Any:
        b0, b1, b2, (pool_kind, b3) = _MIXED[name]
        y0 = self.conv(x, f"{name}/Branch_0/Conv2d_0a_1x1", b0, 1)
        y1 = self.conv(x, f"{name}/Branch_1/Conv2d_0a_1x1", b1[0], 1)
        y1 = self.conv(y1, f"{name}/Branch_1/Conv2d_0b_3x3", b1[1], 3)
        y2 = self.conv(x, f"{name}/Branch_2/Conv2d_0a_1x1", b2[0], 1)
        y2 = self.conv(y2, f"{name}/Branch_2/Conv2d_0b_3x3", b2[1], 3)
        y2 = self.conv(y2, f"{name}/Branch_2/Conv2d_0c_3x3", b2[2], 3)
        pool_name = "MaxPool_0a_3x3" if pool_kind == "max" else "AvgPool_0a_3x3"
        y3 = self.pool(x, pool_kind, f"{name}/Branch_3/{pool_name}")
        y3 = self.conv(y3, f"{name}/Branch_3/Conv2d_0b_1x1", b3, 1)
        return self.keras.layers.Concatenate(name=self._name(f"{SCOPE}/{name}"))([y0, y1, y2, y3])

    def reduction(self, x: Any, name: str) -> Any:
        b0, b1 = _REDUCTION[name]
        y0 = self.conv(x, f"{name}/Branch_0/Conv2d_0a_1x1", b0[0], 1)
        y0 = self.conv(y0, f"{name}/Branch_0/Conv2d_1a_3x3", b0[1], 3, stride=2)
        y1 = self.conv(x, f"{name}/Branch_1/Conv2d_0a_1x1", b1[0], 1)
        y1 = self.conv(y1, f"{name}/Branch_1/Conv2d_0b_3x3", b1[1], 3)
        y1 = self.conv(y1, f"{name}/Branch_1/Conv2d_1a_3x3", b1[2], 3, stride=2)
        y2 = self.pool(x, "max", f"{name}/Branch_2/MaxPool_1a_3x3", stride=2)
        return self.keras.layers.Concatenate(name=self._name(f"{SCOPE}/{name}"))([y0, y1, y2])

    def network(self, include_top: bool, input_size: int) -> Any:
        keras, L = self.keras, self.keras.layers
        images = keras.Input((input_size, input_size, 3), name="images")
        # [0, 1] -> [-1, 1], the range TF-Slim's checkpoints were trained on (see the module docstring)
        x = L.Rescaling(2.0, offset=-1.0, name=f"{SCOPE}.to_slim_range")(images)
        x = self.stem(x)
        x = self.pool(x, "max", "MaxPool_2a_3x3", stride=2)
        x = self.conv(x, "Conv2d_2b_1x1", 64, 1)
        x = self.conv(x, "Conv2d_2c_3x3", 192, 3)
        x = self.pool(x, "max", "MaxPool_3a_3x3", stride=2)
        for name in ("Mixed_3b", "Mixed_3c"):
            x = self.mixed(x, name)
        x = self.reduction(x, "Mixed_4a")
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e"):
            x = self.mixed(x, name)
        x = self.reduction(x, "Mixed_5a")
        for name in ("Mixed_5b", "Mixed_5c"):
            x = self.mixed(x, name)
        features = L.GlobalAveragePooling2D(name="features")(x)  # slim's 7x7 VALID AvgPool_1a at 224x224
        outputs: Any = features
        if include_top:
            full = f"{SCOPE}/Logits/Conv2d_1c_1x1"
            head = L.Conv2D(NUM_CLASSES, 1, use_bias=True, name=self._name(full))
            self.refs[f"{full}/weights"] = (head, "kernel")
            self.refs[f"{full}/biases"] = (head, "bias")
            pooled = L.Reshape((1, 1, 1024))(features)
            # slim applies dropout (keep 0.8) here when training; the head is for inference and export
            logits = L.Reshape((NUM_CLASSES,), name="logits")(head(pooled))
            outputs = {"features": features, "logits": logits}
        model = keras.Model(images, outputs, name=SCOPE)
        model.slim_variables = {name: getattr(layer, attr) for name, (layer, attr) in self.refs.items()}
        return model


def inception_v2(
    weights: str | os.PathLike[str] | None = None,
    *,
    include_top: bool = False,
    trainable: bool = True,
    input_size: int = 224,
) -> Any:
    """A Keras Inception V2: images [N, size, size, 3] in [0,1] -> features [N, 1024] (and logits).
    It scales the images to [-1, 1] inside, as TF-Slim's weights expect.

    weights: a TF-Slim checkpoint (e.g. inception_v2.ckpt from inception_v2_2016_08_28.tar.gz), or None for
    Keras' default initialisation. Call with training=True to run batch norm on batch statistics (what
    the TF-Hub module's {"train"} tag set means) and update its moving averages with decay 0.9997.
    """
    model = _Builder().network(include_top, input_size)
    if weights is not None:
        load_slim_checkpoint(model, weights)
    model.trainable = trainable
    return model


def random_inception_v2(seed: int = 0, *, include_top: bool = True, input_size: int = 224) -> Any:
    """THE NETWORK WITH SEEDED RANDOM WEIGHTS, for tests and benchmarks only: never a model for users.

    He-scaled weights, small betas and non-trivial batch-norm statistics, all from one seed.
    """
    model = inception_v2(include_top=include_top, input_size=input_size)
    rng = np.random.default_rng(seed)
    for name, var in sorted(model.slim_variables.items()):
        var.assign(_random_value(name, tuple(var.shape), rng))
    return model


def _random_value(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if name.endswith("moving_mean"):
        value = rng.normal(0.0, 0.05, shape)
    elif name.endswith("moving_variance"):
        value = rng.uniform(0.5, 1.5, shape)
    elif name.endswith(("beta", "biases")):
        value = rng.normal(0.0, 0.1, shape)
    else:
        fan_in = shape[0] * shape[1] * (1 if "depthwise" in name else shape[2])
        value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    return value.astype(np.float32)


def _open_checkpoint(path: str | os.PathLike[str]) -> tuple[Any, dict[str, list[int]]]:
    """A reader and the weights' shapes (old or new format), without optimiser slots or counters."""
    tf, _ = import_tensorflow()
    try:
        reader = tf.train.load_checkpoint(str(path))
    except Exception as exc:
        raise ModelError(f"cannot read TF-Slim checkpoint {path}: {exc}") from exc
    shapes = reader.get_variable_to_shape_map()
    return reader, {k: v for k, v in shapes.items() if not any(part in k for part in _NOT_WEIGHTS)}


def slim_checkpoint_names(path: str | os.PathLike[str]) -> dict[str, list[int]]:
    """Weights in a TF-Slim checkpoint and their shapes."""
    return _open_checkpoint(path)[1]


def load_slim_checkpoint(model: Any, path: str | os.PathLike[str]) -> None:
    """Assign every variable from the checkpoint by its TF-Slim name; any mismatch is one clear error."""
    reader, found = _open_checkpoint(path)
    expected = model.slim_variables
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if not any(n.startswith(f"{SCOPE}/Logits/") for n in expected):  # head not asked for: ignore its weights
        unexpected = [n for n in unexpected if not n.startswith(f"{SCOPE}/Logits/")]
    wrong_shape = [f"{n}: checkpoint {found[n]}, network {list(expected[n].shape)}"
                   for n in sorted(set(found) & set(expected)) if list(found[n]) != list(expected[n].shape)]
    if missing or unexpected or wrong_shape:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if items:
                parts.append(f"{title} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
        raise ModelError(f"checkpoint {path} does not match TF-Slim Inception V2: " + "; ".join(parts))
    for name, var in expected.items():
        var.assign(reader.get_tensor(name))


def save_slim_checkpoint(model: Any, path: str | os.PathLike[str]) -> str:
    """Write the weights under their TF-Slim names, as TF-Slim's own Saver would."""
    tf, _ = import_tensorflow()
    names = sorted(model.slim_variables)
    tf.raw_ops.SaveV2(prefix=str(path), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[model.slim_variables[n].value for n in names])
    return str(path)



def export_module(model: Any, out_dir: str | os.PathLike[str]) -> Path:
    """Write a module folder that simsearch and hub.load use: a TF2 SavedModel whose
    `image_feature_vector` and `default` signatures take `images` [N, H, W, 3] in [0,1] (scaled to
    [-1, 1] inside the network, as in the TF-Hub module) and return
    `default` [N, 1024], plus `image_classification` (1001 logits, TF-Hub's name; also as `classification`,
    the name earlier releases wrote) when the model has the head.
    Written to a temporary folder and renamed, so a failed export leaves nothing half-written."""
    tf, _ = import_tensorflow()
    out = Path(out_dir)
    if out.exists():
        raise ModelError(f"{out} already exists; choose a new folder for the module")
    size = model.input_shape[1:3]
    spec = tf.TensorSpec([None, size[0], size[1], 3], tf.float32, name="images")
    has_head = isinstance(model.output, dict)

    class Module(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def _run(self, images: Any) -> Any:
            result = self.model(images, training=False)
            return result if has_head else {"features": result}

        @tf.function(input_signature=[spec])
        def feature_vector(self, images: Any) -> dict[str, Any]:
            return {"default": self._run(images)["features"]}

        @tf.function(input_signature=[spec])
        def __call__(self, images: Any) -> Any:
            return self._run(images)["features"]

    module = Module()
    signatures = {"image_feature_vector": module.feature_vector, "default": module.feature_vector}
    if has_head:  # attached only with a head: saving traces every function the module holds
        module.classification = tf.function(lambda images: {"default": module._run(images)["logits"]},
                                            input_signature=[spec])
        signatures["image_classification"] = signatures["classification"] = module.classification
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tf.saved_model.save(module, str(tmp), signatures=signatures)
    os.replace(tmp, out)
    return out


def _unpack_checkpoint(archive: Path, into: Path) -> Path:
    """The .ckpt inside a TF-Slim release tarball (e.g. inception_v2_2016_08_28.tar.gz)."""
    import tarfile

    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and ".ckpt" in m.name]
        if not members:
            raise ModelError(f"{archive} holds no .ckpt file")
        tar.extractall(into, members=members, filter="data")
    ckpts = sorted(into.rglob("*.ckpt")) or sorted(p.with_suffix("") for p in into.rglob("*.ckpt.index"))
    if not ckpts:
        raise ModelError(f"{archive} holds no readable checkpoint")
    return ckpts[0]


def checkpoint_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of the file given, or of a TF2-style checkpoint's files (prefix.*) in name order."""
    import hashlib

    p = Path(path)
    files = [p] if p.is_file() else sorted(p.parent.glob(p.name + ".*"))
    if not files:
        raise ModelError(f"checkpoint {p} does not exist")
    digest = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def import_slim(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                sha256: str | None = None, include_top: bool = True) -> Path:
    """TF-Slim checkpoint (file, prefix, or release .tar.gz) -> module folder usable with --model."""
    import tempfile

    src = Path(checkpoint)
    if not src.exists() and not list(src.parent.glob(glob.escape(src.name) + ".*")):  # a file, or a prefix
        raise ModelError(f"checkpoint {src} not found: give the checkpoint file, its prefix (PREFIX.index "
                         f"beside it), or the release archive inception_v2_2016_08_28.tar.gz")
    if sha256 is not None:
        actual = checkpoint_sha256(src)
        if actual != sha256.lower():
            raise ModelError(f"sha256 of {src} is {actual}, not the expected {sha256.lower()}")
    with tempfile.TemporaryDirectory() as tmp:
        if src.is_file() and src.name.endswith((".tar.gz", ".tgz")):
            src = _unpack_checkpoint(src, Path(tmp))
        names = slim_checkpoint_names(src)
        head = include_top and any(n.startswith(f"{SCOPE}/Logits/") for n in names)
        model = inception_v2(src, include_top=head, trainable=False)
        return export_module(model, out_dir)
