"""What an embedder is: anything with a spec and an `embed` that turns image batches into L2-normalised
vectors; the shared batching and checking of the ones simsearch ships (simsearch.hub, simsearch.runtimes)
and of a plain function (CallableEmbedder). Nothing here loads a model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .config import DEFAULT_INPUT_SIZE, ModelSpec
from .errors import ModelError
from .images import to_model_input


@runtime_checkable
class Embedder(Protocol):
    """Anything with a spec and an embed method can index and query a store."""

    @property
    def spec(self) -> ModelSpec: ...

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 or float32 [N, H, W, 3] (H, W = spec.input_size) -> float32 [N, dim], unit rows."""
        ...


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
    """The model's raw output as [n, dim] float32, finite (not normalised)."""
    arr = np.asarray(out, np.float32)
    if arr.ndim == 4 and arr.shape[1:3] == (1, 1):  # [N,1,1,D] from un-squeezed pooling
        arr = arr[:, 0, 0, :]
    if arr.ndim != 2 or arr.shape[0] != n or (dim is not None and arr.shape[1] != dim):
        want = f"[{n}, {dim if dim is not None else 'D'}]"
        raise ModelError(f"{source} returned shape {list(arr.shape)}, expected {want}")
    if not np.all(np.isfinite(arr)):
        raise ModelError(f"{source} returned non-finite values (NaN or Inf)")
    return arr


class BatchingEmbedder:
    """Shared batching and checking; subclasses provide _run(float32 batch in [0,1]) -> raw vectors."""

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
        return l2_normalize(self.outputs(images))

    def outputs(self, images: np.ndarray) -> np.ndarray:
        """The model's own outputs, not normalised (a classifier's logits)."""
        x = _check_batch(images, self._spec.input_size)
        out = np.empty((len(x), self._spec.dim), np.float32)
        for i in range(0, len(x), self.batch_size):
            chunk = x[i : i + self.batch_size]  # converted per batch: memory stays at one batch of floats
            if chunk.dtype == np.uint8:
                chunk = to_model_input(chunk)
            out[i : i + len(chunk)] = _check_output(self._run(chunk), len(chunk), self._spec.dim, self._spec.handle)
        return out


class CallableEmbedder(BatchingEmbedder):
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
