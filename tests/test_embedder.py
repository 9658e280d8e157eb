"""The model seam: test modules in both TF-Hub formats, loaded through the product's code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simsearch.embedder import CallableEmbedder, HubEmbedder, load_embedder
from simsearch.errors import ModelError

from .conftest import TINY_SIZE


def _batch(n: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size[0], size[1], 3), dtype=np.uint8)


def test_tf1_hub_module_spec_from_signature(tiny_embedder: HubEmbedder, tiny_module: Path) -> None:
    spec = tiny_embedder.spec
    assert spec.handle == str(tiny_module)
    assert spec.input_size == TINY_SIZE  # read from the image_feature_vector signature, not assumed
    assert spec.dim == 32


def test_vectors_are_unit_float32_and_batch_independent(tiny_embedder: HubEmbedder) -> None:
    x = _batch(70, TINY_SIZE)  # more than one internal batch of 32
    v = tiny_embedder.embed(x)
    assert v.shape == (70, 32) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    # inference graph (tags {}): batch norm uses moving statistics, so a photo's vector ignores its batch
    np.testing.assert_allclose(tiny_embedder.embed(x[5:6])[0], v[5], atol=1e-6)
    floats = tiny_embedder.embed(x.astype(np.float32) / 255.0)
    np.testing.assert_allclose(floats, v, atol=1e-5)


def test_train_tag_set_is_the_training_graph(tiny_module: Path) -> None:
    train = HubEmbedder(tiny_module, tags={"train"})
    x = _batch(8, TINY_SIZE, seed=1)
    alone, in_batch = train.embed(x[:1])[0], train.embed(x)[0]
    assert np.abs(alone - in_batch).max() > 1e-3  # batch statistics: the batch changes the vector


def test_tf2_saved_model_defaults_to_224(tf2_module: Path) -> None:
    emb = load_embedder(tf2_module)
    assert emb.spec.input_size == (224, 224) and emb.spec.dim == 24
    v = emb.embed(_batch(3, (224, 224)))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    assert HubEmbedder(tf2_module, input_size=(96, 128)).spec.input_size == (96, 128)


def test_wrong_image_shape_is_named(tiny_embedder: HubEmbedder) -> None:
    with pytest.raises(ModelError, match=r"expected images of shape \[N, 64, 64, 3\], got \[2, 32, 32, 3\]"):
        tiny_embedder.embed(_batch(2, (32, 32)))


def test_missing_folder_and_non_module(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        HubEmbedder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="cannot load model"):
        HubEmbedder(tmp_path / "empty")


def test_unreachable_url_says_how_to_work_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ModelError) as info:
        HubEmbedder("http://127.0.0.1:9/google/imagenet/inception_v2/feature_vector/1")  # loopback, refused
    text = str(info.value)
    assert "cannot fetch model http://127.0.0.1:9/" in text and "--model PATH" in text and "SIMSEARCH_MODEL" in text


def test_callable_embedder_checks_outputs() -> None:
    good = CallableEmbedder(lambda x: x.mean(axis=(1, 2)), name="mean-colour", input_size=(8, 8))
    assert good.spec.dim == 3
    np.testing.assert_allclose(np.linalg.norm(good.embed(_batch(4, (8, 8))), axis=1), 1.0, atol=1e-6)
    with pytest.raises(ModelError, match="non-finite"):
        CallableEmbedder(lambda x: np.full((len(x), 4), np.nan), name="nan", input_size=(8, 8))
    with pytest.raises(ModelError, match=r"returned shape \[1, 2, 3\]"):
        CallableEmbedder(lambda x: np.ones((len(x), 2, 3)), name="3d", input_size=(8, 8))


def test_default_url_is_served_from_the_tfhub_cache(tmp_path: Path, tiny_module: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A module tensorflow-hub already downloaded (cache/sha1(handle)) loads for its URL with no network."""
    import hashlib
    import shutil

    from simsearch.config import DEFAULT_MODEL

    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    shutil.copytree(tiny_module, tmp_path / hashlib.sha1(DEFAULT_MODEL.encode()).hexdigest())
    emb = load_embedder()  # no handle: the Inception V2 URL
    assert emb.spec.handle == DEFAULT_MODEL and emb.spec.dim == 32 and emb.spec.input_size == TINY_SIZE
