"""Models that turn image batches into L2-normalised vectors, and the one place that picks where they run.

The default is the TF-Hub Inception V2 feature-vector module, fetched and loaded by tensorflow-hub exactly
as users' machines load it (URL or local folder, cached under TFHUB_CACHE_DIR). On first use of a module
simsearch compiles it for a fast CPU runtime (simsearch.compiler) and keeps the compiled model under the
module's content fingerprint (simsearch.runtimes); every later process runs that and never imports
TensorFlow. TensorFlow is imported only to fetch, compile, or run on the "tensorflow" runtime.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .config import (
    DEFAULT_INPUT_SIZE,
    DEFAULT_MODEL,
    DEFAULT_RUNTIME,
    RUNTIME_ENV,
    RUNTIMES,
    ModelSpec,
)
from .errors import ModelError
from .handles import fingerprint as module_fingerprint
from .handles import is_remote, local_fingerprint, local_module_dir, normalize_handle, tfhub_cache
from .images import to_model_input

log = logging.getLogger(__name__)

_SIGNATURE_PREFERENCE = ("image_feature_vector", "default", "serving_default")
DOWNLOAD_TIMEOUT_ENV = "SIMSEARCH_DOWNLOAD_TIMEOUT"
DEFAULT_DOWNLOAD_TIMEOUT = 60.0  # seconds a model server may stay silent before the fetch gives up


@runtime_checkable
class Embedder(Protocol):
    """Anything with a spec and an embed method can index and query a store."""

    @property
    def spec(self) -> ModelSpec: ...

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 or float32 [N, H, W, 3] (H, W = spec.input_size) -> float32 [N, dim], unit rows."""
        ...


def import_tensorflow() -> tuple[Any, Any]:
    """Import TensorFlow and tensorflow-hub with their C++ start-up chatter (CUDA probes) kept off
    stderr; if the import fails, what they printed is replayed so the cause is not lost."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ start-up chatter (CUDA probes): not for users
    os.environ.setdefault("TFHUB_CACHE_DIR", str(tfhub_cache()))  # kept across reboots, unlike the temp folder
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
        x = _check_batch(images, self._spec.input_size)
        out = np.empty((len(x), self._spec.dim), np.float32)
        for i in range(0, len(x), self.batch_size):
            chunk = x[i : i + self.batch_size]  # converted per batch: memory stays at one batch of floats
            if chunk.dtype == np.uint8:
                chunk = to_model_input(chunk)
            out[i : i + len(chunk)] = _check_output(self._run(chunk), len(chunk), self._spec.dim, self._spec.handle)
        return out


class HubEmbedder(BatchingEmbedder):
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
        handle = normalize_handle(handle)
        _check_local(handle)  # before TensorFlow's import: a typo fails at once
        if is_remote(handle) and local_module_dir(handle) is None:
            log.info("fetching model %s ...", handle)
        tf, hub = import_tensorflow()
        self._tf = tf
        self.batch_size = batch_size
        try:
            with _download_timeout() as seconds:
                path = hub.resolve(handle)
        except Exception as exc:
            stalled = any(isinstance(e, (TimeoutError, socket.timeout)) for e in _chain(exc))
            why = (f"the server sent nothing for {seconds:g} s (the limit is {DOWNLOAD_TIMEOUT_ENV})"
                   if stalled else str(exc))
            raise ModelError(
                f"cannot fetch model {handle}: {why}. simsearch needs this TF-Hub module once (it is then "
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
        size = (int(size[0]), int(size[1]))
        dim = self._probe_dim(handle, size)
        fp = module_fingerprint(path) if os.path.isdir(path) else None
        self._spec = ModelSpec(handle=handle, input_size=size, dim=dim, fingerprint=fp)

    def features_function(self) -> Any:
        """The embedding as one TensorFlow function, images float32 [N, H, W, 3] in [0,1] -> [N, dim]
        (not normalised): what simsearch.compiler freezes and converts."""
        tf, fn, name, output = self._tf, self._fn, self._input_name, self._output
        h, w = self._spec.input_size

        @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32, name="images")])
        def features(images: Any) -> Any:
            out = fn(**{name: images}) if name else fn(images)
            if isinstance(out, dict):
                out = out[output]
            return tf.reshape(out, [-1, self._spec.dim])  # [N,1,1,D] from un-squeezed pooling, too

        return features.get_concrete_function()

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


def _check_local(handle: str) -> None:
    if not is_remote(handle) and not Path(handle).is_dir():
        raise ModelError(f"model folder {handle} does not exist (expected an unpacked TF-Hub module)")


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


@contextmanager
def _download_timeout() -> Iterator[float]:
    """tensorflow-hub opens URLs with no timeout: a server that accepts and never answers would hang us
    forever. Sockets made meanwhile get a bounded wait for each read."""
    try:
        seconds = float(os.environ.get(DOWNLOAD_TIMEOUT_ENV) or DEFAULT_DOWNLOAD_TIMEOUT)
    except ValueError as exc:
        raise ModelError(f"{DOWNLOAD_TIMEOUT_ENV} must be a number of seconds") from exc
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield seconds
    finally:
        socket.setdefaulttimeout(before)


def load_embedder(
    model: str | os.PathLike[str] | Embedder | None = None,
    *,
    runtime: str | None = None,
    fingerprint: str | None = None,
    tags: set[str] | None = None,
    signature: str | None = None,
    output: str | None = None,
    input_size: tuple[int, int] | None = None,
    batch_size: int = 32,
) -> Embedder:
    """A handle (URL or folder) becomes an embedder on `runtime`; an Embedder is used as it is.

    runtime: "onnxruntime" or "openvino" run the module compiled once for this CPU (compiled on first
    use, which needs TensorFlow; never again after); "tensorflow" runs the module itself. Default:
    $SIMSEARCH_RUNTIME, else DEFAULT_RUNTIME. If compiling fails the reason is logged and the module
    runs on TensorFlow. fingerprint: the content the caller expects (a store's), so that a compiled
    model is found even when the module's files are gone from the TF-Hub cache (a cleared temp folder).
    """
    if isinstance(model, Embedder):
        return model
    from .runtimes import Variant, failure_marker, find_compiled, known_failure, open_compiled

    handle = normalize_handle(model if model is not None else DEFAULT_MODEL)
    runtime = runtime or os.environ.get(RUNTIME_ENV) or DEFAULT_RUNTIME
    if runtime not in RUNTIMES:
        raise ModelError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    _check_local(handle)
    hub_args: dict[str, Any] = dict(tags=tags, signature=signature, output=output, input_size=input_size,
                                    batch_size=batch_size)
    if runtime == "tensorflow" or tags:  # the {"train"} graph is for fine-tuning: TensorFlow's own
        return HubEmbedder(handle, **hub_args)
    variant = Variant(signature, output, tuple(input_size) if input_size else None)
    content = local_fingerprint(handle) or fingerprint
    if content is not None and (found := find_compiled(content, variant)) is not None:
        return open_compiled(found, runtime, handle, batch_size=batch_size)
    if content is not None and (why := known_failure(content, variant, runtime)) is not None:
        log.warning("model %s runs on TensorFlow: it could not be compiled for %s (%s); delete %s to try again",
                    handle, runtime, why, failure_marker(content, variant, runtime))
        return HubEmbedder(handle, **hub_args)
    log.info("loading model %s with TensorFlow to compile it for this CPU (first use only) ...", handle)
    reference = HubEmbedder(handle, **hub_args)
    from .compiler import compile_module

    if reference.spec.fingerprint is None or find_compiled(reference.spec.fingerprint, variant) is None:
        log.info("compiling model %s for this CPU (once) ...", handle)
    try:
        compiled = compile_module(reference, variant, runtime=runtime)
        return open_compiled(compiled, runtime, handle, batch_size=batch_size)
    except (ModelError, ImportError, OSError) as exc:  # OSError: a cache folder we may not write
        log.warning("cannot run model %s on %s (%s): running it on TensorFlow", handle, runtime, exc)
        return reference
