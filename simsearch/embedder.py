"""The one place that picks where a model runs: `load_embedder` turns a handle into an embedder.

The default is the TF-Hub Inception V2 feature-vector module (simsearch.hub loads it with TensorFlow).
On first use of a module simsearch compiles it for a fast CPU runtime (simsearch.compiler) and keeps
the compiled model under the module's content fingerprint (simsearch.runtimes); every later process
runs that and never imports TensorFlow. The model layer reads top-down: this loader uses the compiler,
the runtimes and the TF-Hub embedder; the compiler takes the embedder it compiles as an argument; the
runtimes know only what any embedder is (simsearch.embedding).

What embedders are, and the TF-Hub one, are importable from here too, where they always were.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .compiler import compile_module
from .config import DEFAULT_MODEL, DEFAULT_RUNTIME, RUNTIME_ENV, RUNTIMES
from .embedding import BatchingEmbedder, CallableEmbedder, Embedder, l2_normalize
from .errors import ModelError
from .handles import local_fingerprint, normalize_handle
from .hub import HubEmbedder, check_local, import_tensorflow
from .runtimes import Variant, failure_marker, find_compiled, known_failure, open_compiled


__all__ = ["BatchingEmbedder", "CallableEmbedder", "Embedder", "HubEmbedder", "import_tensorflow", "l2_normalize",
           "load_embedder"]

log = logging.getLogger(__name__)


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
    precision: str = "fp32",
    device: str = "auto",
) -> Embedder:
    """A handle (URL or folder) becomes an embedder on `runtime`; an Embedder is used as it is.

    runtime: "onnxruntime" or "openvino" run the module compiled once for this CPU (compiled on first
    use, which needs TensorFlow; never again after); "tensorflow" runs the module itself. Default:
    $SIMSEARCH_RUNTIME, else DEFAULT_RUNTIME. If compiling fails the reason is logged and the module
    runs on TensorFlow. fingerprint: the content the caller expects (a store's), so that a compiled
    model is found even when the module's files are gone from the TF-Hub cache (a cleared temp folder).
    precision "bf16": the compiled model run in BF16 on OpenVINO (runtime must be openvino); never on
    TensorFlow, so a model that cannot be compiled is an error rather than FP32 in disguise. device:
    auto, cpu or gpu for the compiled model (simsearch.devices); TensorFlow places itself.
    """
    if isinstance(model, Embedder):
        return model

    handle = normalize_handle(model if model is not None else DEFAULT_MODEL)
    runtime = runtime or os.environ.get(RUNTIME_ENV) or DEFAULT_RUNTIME
    if runtime not in RUNTIMES:
        raise ModelError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    check_local(handle)
    hub_args: dict[str, Any] = dict(tags=tags, signature=signature, output=output, input_size=input_size,
                                    batch_size=batch_size)
    if precision != "fp32" and (runtime != "openvino" or tags):
        raise ModelError(f"precision {precision} runs the compiled model on OpenVINO (got runtime {runtime})")
    if runtime == "tensorflow" or tags:  # the {"train"} graph is for fine-tuning: TensorFlow's own
        return HubEmbedder(handle, **hub_args)
    variant = Variant(signature, output, tuple(input_size) if input_size else None)
    content = local_fingerprint(handle) or fingerprint
    if content is not None and (found := find_compiled(content, variant)) is not None:
        return open_compiled(found, runtime, handle, batch_size=batch_size, precision=precision, device=device)
    if content is not None and (why := known_failure(content, variant, runtime)) is not None:
        if precision != "fp32":
            raise ModelError(f"model {handle} could not be compiled for {runtime} ({why}), so it cannot run in "
                             f"{precision}; delete {failure_marker(content, variant, runtime)} to try again")
        log.warning("model %s runs on TensorFlow: it could not be compiled for %s (%s); delete %s to try again",
                    handle, runtime, why, failure_marker(content, variant, runtime))
        return HubEmbedder(handle, **hub_args)
    log.info("loading model %s with TensorFlow to compile it for this CPU (first use only) ...", handle)
    reference = HubEmbedder(handle, **hub_args)
    if reference.spec.fingerprint is None or find_compiled(reference.spec.fingerprint, variant) is None:
        log.info("compiling model %s for this CPU (once) ...", handle)
    try:
        compiled = compile_module(reference, variant, runtime=runtime)
        return open_compiled(compiled, runtime, handle, batch_size=batch_size, precision=precision, device=device)
    except (ModelError, ImportError, OSError) as exc:  # OSError: a cache folder we may not write
        if precision != "fp32" or device == "gpu":
            raise ModelError(f"model {handle} cannot run in {precision} on {device}: {exc}") from exc
        log.warning("cannot run model %s on %s (%s): running it on TensorFlow", handle, runtime, exc)
        return reference
