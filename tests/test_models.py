"""simsearch's own Inception V2: import-slim, export, fine-tuning semantics, indexing with the result."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import simsearch
from simsearch.cli import main
from simsearch.models import inception_v2, random_inception_v2

from .conftest import photo
from .slim_reference import slim_reference

pytestmark = pytest.mark.slow


def _synthetic_photos(n: int) -> np.ndarray:
    """Smooth gradients with noise in [0, 1]: not photos, but no corel1k needed."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:224, 0:224] / 223.0
    out = [np.stack([xx * rng.random() + yy * rng.random(), yy, 1 - xx], -1) * 0.8 + rng.random((224, 224, 3)) * 0.2
           for _ in range(n)]
    return np.clip(np.stack(out), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def slim_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object], np.ndarray]:
    """A checkpoint written by TF-Slim's own graph and saver (as the 2016 release was), and that graph's
    outputs on a few inputs fed the way it was trained: (x - 0.5) * 2."""
    x = _synthetic_photos(3)
    ref = slim_reference(tmp_path_factory.mktemp("ckpt") / "inception_v2.ckpt", x, seed=7, training=False)
    return Path(ref["ckpt"]), ref, x


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory, slim_ckpt: tuple[Path, dict[str, object], np.ndarray]) -> Path:
    out = tmp_path_factory.mktemp("modules") / "inception_v2"
    r = CliRunner().invoke(main, ["model", "import-slim", str(slim_ckpt[0]), str(out)], catch_exceptions=False)
    assert r.exit_code == 0 and f"--model {out}" in r.output
    return out


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_imported_module_has_the_hub_signatures_and_tf_slims_outputs(
        imported: Path, slim_ckpt: tuple[Path, dict[str, object], np.ndarray]) -> None:
    """The reference is TF-Slim's graph, not simsearch's Keras model: without corel1k this is the one check
    that an imported checkpoint computes what TF-Slim computes."""
    import tensorflow as tf
    import tensorflow_hub as hub

    _, ref, x = slim_ckpt
    obj = hub.load(str(imported))
    assert {"image_feature_vector", "default", "image_classification", "classification"} <= set(obj.signatures)
    feats = obj.signatures["image_feature_vector"](images=tf.constant(x))["default"].numpy()
    logits = obj.signatures["classification"](images=tf.constant(x))["default"].numpy()
    assert feats.shape == (3, 1024) and logits.shape == (3, 1001)
    assert _relative(feats, ref["features"]) < 1e-4
    assert _relative(logits, ref["logits"]) < 1e-4
    assert _relative(feats, ref["features_from_unit_range"]) > 1e-2  # the input convention is really tested


def test_imported_module_indexes_and_queries(tmp_path: Path, imported: Path) -> None:
    """The query is bytes, not an indexed path, so the imported module runs on it (an indexed path would
    be answered with its stored vector)."""
    for i in range(6):
        photo(tmp_path / "photos" / f"p{i}.jpg", seed=i, size=(320, 240))
    r = CliRunner().invoke(main, ["index", str(tmp_path / "photos"), "--store", str(tmp_path / "s"),
                                  "--model", str(imported), "--json"])
    assert r.exit_code == 0, r.output
    with simsearch.open(tmp_path / "s", create=True) as store:
        assert store.stats().images == 6 and store.stats().dim == 1024
        hits = store.query((tmp_path / "photos" / "p3.jpg").read_bytes(), k=2)
        assert hits[0].path == str(tmp_path / "photos" / "p3.jpg") and hits[0].score > 0.999
        assert hits[1].score < 0.999  # another photo: the model's vectors tell them apart


def test_an_imported_module_with_its_head_gives_labels(tmp_path: Path, imported: Path) -> None:
    """The checkpoint's own logits: the store's labels are the module's image_classification signature,
    called directly through TF-Hub, though they come from its head on the store's features in one pass."""
    from simsearch.labels import Vocabulary

    from .modules import class_probabilities

    paths = [photo(tmp_path / "photos" / f"p{i}.jpg", seed=i, size=(320, 240)) for i in range(4)]
    r = CliRunner().invoke(main, ["index", str(tmp_path / "photos"), "--store", str(tmp_path / "s"), "--model",
                                  str(imported), "--labels", "--classifier", str(imported)])
    assert r.exit_code == 0 and "labelled 4 photos" in r.output, r.output
    with simsearch.open(tmp_path / "s") as store:
        assert store.stats().labels["passes"] == 1  # its head on the features the store computes: one pass
        pixels = np.stack([store.model.decoding.load(str(p))[0] for p in paths])
        probs = class_probabilities(imported, pixels)
        for path, row in zip(paths, probs):
            image_id = next(h.id for h in store.query(path, k=1))
            shown = store.labels_of(image_id, k=3)
            assert [x.index for x in shown] == [int(c) for c in np.argsort(-row)[:3]]
            np.testing.assert_allclose([x.probability for x in shown], np.sort(row)[::-1][:3], rtol=1e-3)
            assert shown[0].name == Vocabulary.shipped().name(shown[0].index)


def test_release_tarball_and_sha256(tmp_path: Path, slim_ckpt: tuple[Path, dict[str, object], np.ndarray]) -> None:
    prefix = slim_ckpt[0]
    archive = tmp_path / "inception_v2_2016_08_28.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in [prefix, *prefix.parent.glob(prefix.name + ".*")]:  # V1: one file; V2: .index and .data
            if f.is_file():
                tar.add(f, arcname=f.name)
    good = hashlib.sha256(archive.read_bytes()).hexdigest()
    r = CliRunner().invoke(main, ["model", "import-slim", str(archive), str(tmp_path / "m"), "--sha256", "ab" * 32])
    assert r.exit_code == 1 and f"sha256 of {archive} is {good}" in r.output and not (tmp_path / "m").exists()
    r = CliRunner().invoke(main, ["model", "import-slim", str(archive), str(tmp_path / "m"), "--sha256", good,
                                  "--no-head"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["model", "import-slim", str(archive), str(tmp_path / "m")])
    assert r.exit_code == 1 and "already exists" in r.output


def test_training_mode_uses_batch_statistics_and_updates_moving_averages() -> None:
    model = random_inception_v2(seed=1, include_top=False)
    bn = model.get_layer("InceptionV2.Conv2d_2b_1x1.BatchNorm")
    x = np.random.default_rng(2).random((4, 224, 224, 3), dtype=np.float32)
    mean0 = bn.moving_mean.numpy().copy()

    infer_a, infer_b = model(x, training=False).numpy(), model(x[:1], training=False).numpy()
    np.testing.assert_allclose(infer_a[0], infer_b[0], rtol=1e-4, atol=1e-5)  # moving statistics: batch-independent
    np.testing.assert_array_equal(bn.moving_mean.numpy(), mean0)  # inference never moves them

    # the batch mean of this layer's input, computed independently of the layer
    probe = __import__("keras").Model(model.input, model.get_layer("InceptionV2.Conv2d_2b_1x1").output)
    batch_mean = probe(x, training=True).numpy().mean(axis=(0, 1, 2))
    train_a = model(x, training=True).numpy()
    assert np.abs(train_a[0] - infer_a[0]).max() > 1e-3  # training mode normalises with batch statistics
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.9997 * mean0 + 0.0003 * batch_mean, rtol=1e-4, atol=1e-6)


def test_one_optimiser_step_changes_the_trainable_weights() -> None:
    import keras

    base = random_inception_v2(seed=3, include_top=False)
    head = keras.layers.Dense(3)
    model = keras.Sequential([base, head])
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(4).random((4, 224, 224, 3), dtype=np.float32)
    w = base.get_layer("InceptionV2.Mixed_5c.Branch_0.Conv2d_0a_1x1")
    before, stem_before = w.kernel.numpy().copy(), base.get_layer("InceptionV2.Conv2d_1a_7x7").bias.numpy().copy()
    model.train_on_batch(x, np.array([0, 1, 2, 0]))
    assert np.abs(w.kernel.numpy() - before).max() > 0
    assert np.abs(base.get_layer("InceptionV2.Conv2d_1a_7x7").bias.numpy() - stem_before).max() > 0

    frozen = inception_v2(trainable=False)
    assert not frozen.trainable_weights
