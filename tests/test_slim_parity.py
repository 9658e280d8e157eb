"""simsearch's Inception V2 against the reference: tf_slim.nets.inception_v2, on real photos.

The reference graph gets seeded random weights and non-trivial batch-norm statistics, is saved as a
TF-Slim checkpoint by TF-Slim's own saver, and simsearch imports that checkpoint; vectors and logits
must agree to 1e-4. The reference follows TF-Slim's convention, not simsearch's: it is fed the photos
scaled to [-1, 1] (slim's inception preprocessing, `(x - 0.5) * 2`), while simsearch gets [0, 1] as the
TF-Hub module does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simsearch.images import load_image

from .slim_reference import slim_reference as run_slim_reference

pytestmark = pytest.mark.slow
TOL = 1e-4


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def photos(corel_images: Path) -> np.ndarray:
    files = sorted(corel_images.glob("q_*.jpg"))[:12]
    return np.stack([load_image(f, (224, 224))[0] for f in files]).astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def slim_reference(tmp_path_factory: pytest.TempPathFactory, photos: np.ndarray) -> dict[str, object]:
    """Run the TF-Slim graph in both modes; save its weights as a TF-Slim checkpoint."""
    return run_slim_reference(tmp_path_factory.mktemp("slim") / "inception_v2.ckpt", photos)


def test_inference_vectors_and_logits_match_tf_slim(slim_reference: dict, photos: np.ndarray) -> None:
    from simsearch.models import inception_v2, slim_checkpoint_names

    assert Path(slim_reference["ckpt"]).is_file()  # one old-format file, as released in 2016
    assert len(slim_checkpoint_names(slim_reference["ckpt"])) == 277
    model = inception_v2(slim_reference["ckpt"], include_top=True)
    assert len(model.slim_variables) == 277  # one to one
    out = model(photos, training=False)
    assert _relative(out["features"].numpy(), slim_reference["features"]) < TOL
    assert _relative(out["logits"].numpy(), slim_reference["logits"]) < TOL
    # the input convention matters with these weights: [0, 1] fed to TF-Slim's graph is another function
    assert _relative(out["features"].numpy(), slim_reference["features_from_unit_range"]) > 1e-2


def test_training_mode_forward_matches_tf_slim(slim_reference: dict, photos: np.ndarray) -> None:
    from simsearch.models import inception_v2

    model = inception_v2(slim_reference["ckpt"])
    train = model(photos, training=True).numpy()
    assert _relative(train, slim_reference["train_features"]) < TOL
    assert _relative(train, slim_reference["features"]) > 1e-2  # batch statistics really were used


def test_checkpoint_mismatch_is_one_clear_error(tmp_path: Path) -> None:
    import tensorflow as tf

    from simsearch.errors import ModelError
    from simsearch.models import inception_v2

    prefix = str(tmp_path / "other.ckpt")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["InceptionV2/Conv2d_2b_1x1/weights", "Extra/thing"],
                      shape_and_slices=["", ""], tensors=[tf.zeros([1, 1, 64, 32]), tf.zeros([2])])
    with pytest.raises(ModelError) as info:
        inception_v2(prefix)
    text = str(info.value)
    assert "missing (274)" in text and "unexpected (1): Extra/thing" in text
    assert "wrong shape (1): InceptionV2/Conv2d_2b_1x1/weights: checkpoint [1, 1, 64, 32], network [1, 1, 64, 64]" in text


def test_import_slim_module_matches_tf_slim(slim_reference: dict, photos: np.ndarray, tmp_path: Path) -> None:
    """The path users take: `simsearch model import-slim` on the old-format file, then the module's signatures."""
    import tensorflow as tf
    import tensorflow_hub as hub
    from click.testing import CliRunner

    from simsearch.cli import main

    out = tmp_path / "inception_v2"
    r = CliRunner().invoke(main, ["model", "import-slim", slim_reference["ckpt"], str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    module = hub.load(str(out))
    x = tf.constant(photos)
    vectors = module.signatures["image_feature_vector"](images=x)["default"].numpy()
    logits = module.signatures["classification"](images=x)["default"].numpy()
    assert _relative(vectors, slim_reference["features"]) < TOL
    assert _relative(logits, slim_reference["logits"]) < TOL
