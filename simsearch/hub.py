"""A TF-Hub module run by TensorFlow itself: fetched and loaded by tensorflow-hub exactly as users'
machines load it (URL or local folder, cached under TFHUB_CACHE_DIR). The TF1 Hub format (tags, the
`image_feature_vector` signature) and TF2 SavedModels. TensorFlow is imported only here, and only when
a module is fetched, compiled (simsearch.compiler) or run on the "tensorflow" runtime.
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
from typing import Any

import numpy as np

from .config import DEFAULT_INPUT_SIZE, DEFAULT_MODEL, ModelSpec
from .embedding import BatchingEmbedder
from .errors import ModelError
from .handles import fingerprint as module_fingerprint
from .handles import is_remote, local_module_dir, normalize_handle, tfhub_cache

log = logging.getLogger(__name__)


_SIGNATURE_PREFERENCE = ("image_feature_vector", "default", "serving_default")
DOWNLOAD_TIMEOUT_ENV = "SIMSEARCH_DOWNLOAD_TIMEOUT"
DEFAULT_DOWNLOAD_TIMEOUT = 60.0  # seconds a model server may stay silent before the fetch gives up


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
        check_local(handle)  # before TensorFlow's import: a typo fails at once
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


def check_local(handle: str) -> None:
    """A local handle must be a folder: said at once, before TensorFlow's seconds-long import."""
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
