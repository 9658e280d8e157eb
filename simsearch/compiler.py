"""Compile a loaded TF-Hub module once: its feature-vector function to ONNX (tf2onnx), checked against
TensorFlow, then published to the cache for every later process (simsearch.runtimes).

The function is frozen at the module's input size with an open batch dimension, from the same
signature and output the TensorFlow embedder uses, so the compiled model is that function and nothing
else: the scaling the module does inside (TF-Slim's [-1, 1]) is part of it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ModelError
from .files import atomic_write, publish_dir
from .runtimes import (
    META_FILE,
    MODEL_FILE,
    CompiledModel,
    Variant,
    check_images,
    compiled_dir,
    failure_marker,
    find_compiled,
    min_cosine,
    open_compiled,
)

if TYPE_CHECKING:
    from .hub import HubEmbedder

COMPILED_MIN_COSINE = 0.99999  # against TensorFlow on the check images, or the compiled model is not used
ONNX_OPSET = 17


def to_onnx(embedder: HubEmbedder) -> bytes:
    """The embedder's function, variables frozen to constants, as an ONNX model (input `images`)."""
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    # tf2onnx logs every op it cannot map; the one error that matters is raised (or found by the check)
    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)
    try:
        frozen = convert_variables_to_constants_v2(embedder.features_function())
        graph = frozen.graph.as_graph_def()
        proto, _ = tf2onnx.convert.from_graph_def(
            graph, input_names=[t.name for t in frozen.inputs], output_names=[t.name for t in frozen.outputs],
            opset=ONNX_OPSET)
    except Exception as exc:
        raise ModelError(f"tf2onnx could not convert {embedder.spec.handle}: {exc}") from exc
    return proto.SerializeToString()


def compile_module(embedder: HubEmbedder, variant: Variant, *, runtime: str = "onnxruntime") -> CompiledModel:
    """Compile, check on `runtime` against TensorFlow, publish; an existing entry is returned as it is."""
    import tensorflow as tf
    import tf2onnx

    spec = embedder.spec
    if spec.fingerprint is None:
        raise ModelError(f"model {spec.handle} has no content fingerprint to file its compiled form under")
    found = find_compiled(spec.fingerprint, variant)
    if found is not None:
        return found
    t0 = time.perf_counter()
    final = compiled_dir(spec.fingerprint, variant)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent)
    try:
        folder = Path(tmp)
        (folder / MODEL_FILE).write_bytes(to_onnx(embedder))
        meta = {
            "fingerprint": spec.fingerprint, "handle": spec.handle, "variant": variant.key,
            "signature": variant.signature, "output": variant.output, "precision": variant.precision,
            "input_size": list(spec.input_size), "dim": spec.dim, "opset": ONNX_OPSET,
            "tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__,
        }
        candidate = CompiledModel(folder, meta)
        images = check_images(spec.input_size)
        cosine = min_cosine(open_compiled(candidate, runtime, spec.handle).embed(images), embedder.embed(images))
        if not cosine >= COMPILED_MIN_COSINE:
            raise ModelError(f"the compiled model differs from TensorFlow on {runtime}: minimum cosine "
                             f"{cosine:.7f} < {COMPILED_MIN_COSINE}")
        meta |= {"min_cosine_to_tensorflow": round(cosine, 8), "checked_on": runtime,
                 "compile_seconds": round(time.perf_counter() - t0, 2)}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
        publish_dir(folder, final)
    except ModelError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        atomic_write(failure_marker(spec.fingerprint, variant, runtime), f"{exc}\n".encode())
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    found = find_compiled(spec.fingerprint, variant)
    if found is None:
        raise ModelError(f"compiled model vanished from {final}")
    return found

