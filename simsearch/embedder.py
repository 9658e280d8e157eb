"""Models that turn image batches into L2-normalised vectors.

The default is the TF-Hub Inception V2 feature-vector module, loaded through tensorflow-hub exactly as
users' machines load it (URL or local folder, cached under TFHUB_CACHE_DIR). TensorFlow is imported
only when a model is loaded, so commands that need no model (stats, failures) start fast.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .config import DEFAULT_INPUT_SIZE, DEFAULT_MODEL, ModelSpec
from .errors import ModelError
from .images import to_model_input

_REMOTE_PREFIXES = ("http://", "https://", "gs://", "s3://")
_SIGNATURE_PREFERENCE = ("image_feature_vector", "default", "serving_default")


@runtime_checkable
class Embedder(Protocol):
    """Anything with a spec and an embed method can index and query a store."""

    @property
    def spec(self) -> ModelSpec: ...

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 or float32 [N, H, W, 3] (H, W = spec.input_size) -> float32 [N, dim], unit rows."""
        ...


def _import_tensorflow() -> tuple[Any, Any]:
    """Import TensorFlow and tensorflow-hub with their C++ start-up chatter (CUDA probes) kept off
    stderr; if the import fails, what they printed is replayed so the cause is not lost."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        import tensorflow as tf
        import tensorflow_hub as hub

        return tf, hub
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf
            import tensorflow_hub as hub
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    tf.get_logger().setLevel("ERROR")
    return tf, hub


def normalize_handle(handle: str | os.PathLike[str]) -> str:
    """URLs stay as they are; local module folders become absolute, so a store records where they are."""
    text = os.fspath(handle)
    if text.startswith(_REMOTE_PREFIXES):
        return text
    return str(Path(text).expanduser().resolve())


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


def _check_batch(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (size[0], size[1], 3):
        raise ModelError(f"expected images of shape [N, {size[0]}, {size[1]}, 3], got {list(images.shape)}")
    if images.dtype not in (np.uint8, np.float32):
        raise ModelError(f"expected uint8 or float32 images, got {images.dtype}")
    return images


def _check_output(out: Any, n: int, dim: int | None, source: str) -> np.ndarray:
    arr = np.asarray(out)
    if arr.ndim == 4 and arr.shape[1:3] == (1, 1):  # [N,1,1,D] from un-squeezed pooling
        arr = arr[:, 0, 0, :]
    if arr.ndim != 2 or arr.shape[0] != n or (dim is not None and arr.shape[1] != dim):
        want = f"[{n}, {dim if dim is not None else 'D'}]"
        raise ModelError(f"{source} returned shape {list(arr.shape)}, expected {want}")
    if not np.all(np.isfinite(arr)):
        raise ModelError(f"{source} returned non-finite values (NaN or Inf)")
    return l2_normalize(arr)


class _BatchingEmbedder:
    """Shared batching and checking; subclasses provide _run(float32 batch) -> raw vectors."""

    _spec: ModelSpec
    batch_size: int

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def _run(self, batch: np.ndarray) -> Any:
        raise NotImplementedError

    def _probe_dim(self, name: str, size: tuple[int, int]) -> int:
        out = _check_output(self._run(np.zeros((1, size[0], size[1], 3), np.float32)), 1, None, name)
        return int(out.shape[1])

    def embed(self, images: np.ndarray) -> np.ndarray:
        x = _check_batch(images, self._spec.input_size)
        out = np.empty((len(x), self._spec.dim), np.float32)
        for i in range(0, len(x), self.batch_size):
            chunk = x[i : i + self.batch_size]  # converted per batch: memory stays at one batch of floats
            if chunk.dtype == np.uint8:
                chunk = to_model_input(chunk)
            out[i : i + len(chunk)] = _check_output(self._run(chunk), len(chunk), self._spec.dim, self._spec.handle)
        return out


class HubEmbedder(_BatchingEmbedder):
    """A TF-Hub module: the TF1 Hub format (tags, `image_feature_vector` signature) or a TF2 SavedModel."""

    def __init__(
        self,
        handle: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        tags: set[str] | None = None,
        signature: str | None = None,
        output: str | None = None,
        input_size: tuple[int, int] | None = None,
        batch_size: int = 32,
    ) -> None:
        tf, hub = _import_tensorflow()
        self._tf = tf
        self.batch_size = batch_size
        handle = normalize_handle(handle)
        remote = handle.startswith(_REMOTE_PREFIXES)
        if not remote and not Path(handle).is_dir():
            raise ModelError(f"model folder {handle} does not exist (expected an unpacked TF-Hub module)")
        try:
            path = hub.resolve(handle)
        except Exception as exc:
            raise ModelError(
                f"cannot fetch model {handle}: {exc}. simsearch needs this TF-Hub module once (it is then "
                f"cached under TFHUB_CACHE_DIR). On a machine without access to it, download the module "
                f"elsewhere, unpack it into a folder and pass that folder with --model PATH "
                f"(or SIMSEARCH_MODEL=PATH)."
            ) from exc
        try:
            obj = hub.load(path, tags=tags)
        except Exception as exc:
            raise ModelError(f"cannot load model {handle} (from {path}): {exc}") from exc
        self._obj = obj  # keeps variables alive
        self._fn, self._input_name, self._output, declared = self._pick_function(obj, signature, output, handle)
        size = input_size or declared or DEFAULT_INPUT_SIZE
        dim = self._probe_dim(handle, size)
        self._spec = ModelSpec(handle=handle, input_size=(int(size[0]), int(size[1])), dim=dim)

    @staticmethod
    def _pick_function(
        obj: Any, signature: str | None, output: str | None, handle: str
    ) -> tuple[Callable[..., Any], str | None, str | None, tuple[int, int] | None]:
        signatures = dict(getattr(obj, "signatures", {}) or {})
        names = (signature,) if signature else _SIGNATURE_PREFERENCE
        for name in names:
            if name in signatures:
                fn = signatures[name]
                break
        else:
            if signature or not callable(obj):
                raise ModelError(
                    f"model {handle} has no signature {' or '.join(repr(n) for n in names)}; "
                    f"it has {sorted(signatures) or 'none'}"
                )
            return obj, None, output, None  # a TF2 object whose __call__ takes the images
        _, kwargs = fn.structured_input_signature
        if len(kwargs) == 1:
            input_name = next(iter(kwargs))
        elif "images" in kwargs:
            input_name = "images"
        else:
            raise ModelError(f"model {handle} signature {name!r} takes {sorted(kwargs)}, expected one 'images' input")
        shape = kwargs[input_name].shape
        if shape.rank != 4 or shape[3] not in (None, 3):
            raise ModelError(f"model {handle} signature {name!r} input has shape {shape}, expected [N, H, W, 3]")
        declared = (int(shape[1]), int(shape[2])) if shape[1] is not None and shape[2] is not None else None
        outputs = fn.structured_outputs
        if output is None and isinstance(outputs, dict):
            if "default" in outputs:
                output = "default"
            elif len(outputs) == 1:
                output = next(iter(outputs))
            else:
                raise ModelError(f"model {handle} signature {name!r} has outputs {sorted(outputs)}; name one")
        return fn, input_name, output, declared

    def _run(self, batch: np.ndarray) -> Any:
        x = self._tf.constant(batch)
        try:
            out = self._fn(**{self._input_name: x}) if self._input_name else self._fn(x)
        except Exception as exc:
            raise ModelError(f"model failed on a batch of shape {list(batch.shape)}: {exc}") from exc
        if isinstance(out, dict):
            out = out[self._output]
        return out.numpy()


class CallableEmbedder(_BatchingEmbedder):
    """Wraps any function float32 [N,H,W,3] in [0,1] -> [N,D], e.g. your own Keras model."""

    def __init__(
        self,
        fn: Callable[[np.ndarray], Any],
        *,
        name: str,
        input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
        batch_size: int = 32,
    ) -> None:
        self._fn = fn
        self.batch_size = batch_size
        dim = self._probe_dim(name, input_size)
        self._spec = ModelSpec(handle=name, input_size=input_size, dim=dim)

    def _run(self, batch: np.ndarray) -> Any:
        out = self._fn(batch)
        return out.numpy() if hasattr(out, "numpy") else out


def load_embedder(model: str | os.PathLike[str] | Embedder | None = None, **kwargs: Any) -> Embedder:
    """A handle (URL or folder) becomes a HubEmbedder; an Embedder is used as it is."""
    if isinstance(model, Embedder):
        return model
    return HubEmbedder(model if model is not None else DEFAULT_MODEL, **kwargs)
