"""The model compiled once per module, then run without TensorFlow: on ONNX Runtime or OpenVINO.

The compiled model (ONNX) lives in the per-user cache (simsearch.handles.cache_dir), under the module's
content fingerprint and the way it was asked for (signature, output, input size):

    CACHE/compiled/<fingerprint>/<variant>/model.onnx + meta.json

meta.json says what it is and how close it came to TensorFlow on the check images when compiled
(simsearch.compiler writes it; nothing is cached that failed the check). Loading one costs an import of
the runtime and a session, well under a second, where importing TensorFlow alone costs seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import cpu, devices
from .config import ModelSpec
from .embedding import BatchingEmbedder
from .errors import ModelError
from .files import publish_dir
from .handles import cache_dir

MODEL_FILE = "model.onnx"
META_FILE = "meta.json"
_OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """How a module is asked for: None means the module's own choice (signature, output, input size)."""

    signature: str | None = None
    output: str | None = None
    input_size: tuple[int, int] | None = None
    precision: str = "fp32"

    @property
    def key(self) -> str:
        text = json.dumps([self.signature, self.output, list(self.input_size or ()), self.precision])
        return f"{self.precision}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class CompiledModel:
    """A compiled model in the cache: its folder and what meta.json says of it."""

    folder: Path
    meta: dict[str, Any]

    @property
    def path(self) -> Path:
        """The model file: ONNX when compiled from the module, OpenVINO IR (.xml) when quantized."""
        return self.folder / str(self.meta.get("file", MODEL_FILE))

    @property
    def input_size(self) -> tuple[int, int]:
        h, w = self.meta["input_size"]
        return int(h), int(w)

    def spec(self, handle: str, runtime: str) -> ModelSpec:
        return ModelSpec(handle=handle, input_size=self.input_size, dim=int(self.meta["dim"]),
                         fingerprint=self.meta["fingerprint"], runtime=runtime, precision=self.meta["precision"])


def compiled_dir(fingerprint: str, variant: Variant) -> Path:
    return cache_dir() / "compiled" / fingerprint.replace("sha256:", "")[:32] / variant.key


def find_compiled(fingerprint: str, variant: Variant) -> CompiledModel | None:
    folder = compiled_dir(fingerprint, variant)
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("fingerprint") != fingerprint or not (folder / meta.get("file", MODEL_FILE)).is_file():
        return None
    return CompiledModel(folder, meta)


def failure_marker(fingerprint: str, variant: Variant, runtime: str) -> Path:
    """Where a failed compile says why, so later runs go straight to TensorFlow instead of retrying."""
    folder = compiled_dir(fingerprint, variant)
    return folder.with_name(f"{folder.name}.{runtime}.failed.txt")


def known_failure(fingerprint: str, variant: Variant, runtime: str) -> str | None:
    try:
        return failure_marker(fingerprint, variant, runtime).read_text().strip() or "unknown reason"
    except OSError:
        return None


class OnnxRuntimeEmbedder(BatchingEmbedder):
    """The compiled model on ONNX Runtime: its CUDA provider where one is installed and starts (see
    simsearch.devices), else the CPU."""

    def __init__(self, model: CompiledModel, handle: str, *, batch_size: int = 32, device: str = "auto") -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelError("runtime onnxruntime is not installed: pip install onnxruntime") from exc
        providers = devices.onnxruntime_providers(device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(model.path), options, providers=providers)
        except Exception as exc:  # a corrupt cache file: say which, the user can delete it
            raise ModelError(f"cannot load compiled model {model.path}: {exc}") from exc
        self.device = devices.onnxruntime_device(device, self._session.get_providers())
        if self.device == "gpu":
            log.info("model %s runs on the GPU (ONNX Runtime %s)", handle, self._session.get_providers()[0])
        self._input = self._session.get_inputs()[0].name
        self.compiled = model
        self.batch_size = batch_size
        self._spec = model.spec(handle, "onnxruntime")

    def _run(self, batch: np.ndarray) -> Any:
        return self._session.run(None, {self._input: batch})[0]


class OpenVinoEmbedder(BatchingEmbedder):
    """The compiled model on OpenVINO's CPU plugin, in the arithmetic asked for: FP32 by default (the
    plugin's own default on CPUs with BF16 units is BF16, which is another store's model), BF16 for a
    BF16 store. Where the CPU has no BF16 units a BF16 store's model runs in FP32, which the store's
    gate (simsearch.precision) kept within cosine 0.99 of its vectors; a warning says so."""

    def __init__(self, model: CompiledModel, handle: str, *, batch_size: int = 32,
                 precision: str | None = None, device: str = "cpu") -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise ModelError("runtime openvino is not installed: pip install openvino") from exc
        precision = precision or str(model.meta["precision"])
        hint = _OPENVINO_HINTS.get(precision)
        if precision == "bf16" and not cpu.has_bf16():
            hint = "f32"  # said once: an embedder is made once per store opened
            log.warning("this store's model runs in BF16, which this CPU lacks (no AVX512_BF16 or AMX): "
                        "running it in FP32, within cosine 0.99 of the store's vectors")
        core = ov.Core()
        target = devices.openvino_device(device, core.available_devices, precision)
        try:
            config = {"PERFORMANCE_HINT": "LATENCY"}
            if hint is not None and target == "CPU":  # INT8 keeps the plugin's choice for unquantized layers
                config["INFERENCE_PRECISION_HINT"] = hint
            bf16 = hint == "bf16" and target == "CPU"
            graph = _bf16_graph(core, model.path) if bf16 else core.read_model(str(model.path))
            self._compiled = core.compile_model(graph, target, config)
        except Exception as exc:
            raise ModelError(f"cannot load compiled model {model.path} on OpenVINO: {exc}") from exc
        self.compiled = model
        self.batch_size = batch_size
        self.inference_precision = "fp32" if hint == "f32" else precision  # what the CPU really runs
        self.device = "cpu" if target == "CPU" else "gpu"
        self._spec = replace(model.spec(handle, "openvino"), precision=precision)
        self._lock = threading.Lock()  # a compiled model's call reuses one infer request: one caller at a time

    def _run(self, batch: np.ndarray) -> Any:
        with self._lock:
            return self._compiled(np.ascontiguousarray(batch))[0].copy()


BF16_DIR = "bf16"  # beside the compiled model: its IR with the first depthwise convolution marked precise


def _bf16_graph(core: Any, path: Path) -> Any:
    """The compiled model for BF16, its first depthwise convolution marked to stay FP32. Early depthwise
    layers add few products per output, so BF16's 8-bit mantissa shows there most: on the trained
    stand-in all-BF16 left one photo in 100 at cosine 0.987 to FP32; this layer in FP32 lifted the worst
    to 0.997 at 2.1x FP32's speed instead of 2.4x (Inception V2's stem is such a layer too). The CPU
    plugin honours the IR attribute `precise` (the one fp16 compression respects), which Python cannot
    set on a node: the graph goes through IR text once, and the marked IR is kept beside the model, since
    the round trip cost 150 ms at every store opening (read 50-95 ms, compile about 100)."""
    import shutil
    import tempfile
    import xml.etree.ElementTree as ET

    import openvino as ov

    cached = path.parent / BF16_DIR / "model.xml"
    if cached.is_file():
        try:
            return core.read_model(str(cached))
        except Exception as exc:  # a damaged cache file: made again
            log.warning("the BF16 graph kept in %s cannot be read (%s): making it again", cached.parent, exc)
            shutil.rmtree(cached.parent, ignore_errors=True)
    try:
        tmp, keep = Path(tempfile.mkdtemp(prefix=".bf16-", dir=path.parent)), True
    except OSError:  # a cache this user cannot write to (shared, read-only): marked again at each opening
        tmp, keep = Path(tempfile.mkdtemp(prefix="simsearch-bf16-")), False
    try:
        xml = tmp / "model.xml"
        ov.save_model(core.read_model(str(path)), xml, compress_to_fp16=False)
        tree = ET.parse(xml)
        layers = tree.getroot().iter("layer")
        first = next((layer for layer in layers if layer.get("type") == "GroupConvolution"), None)
        if first is not None:
            rt = first.find("rt_info")
            if rt is None:
                rt = ET.SubElement(first, "rt_info")
            ET.SubElement(rt, "attribute", {"name": "precise", "version": "0"})
            tree.write(xml, encoding="utf-8", xml_declaration=True)
        if not keep:  # read into memory: the folder goes below
            return core.read_model(xml.read_bytes(), ov.Tensor(np.fromfile(xml.with_suffix(".bin"), np.uint8)))
        publish_dir(tmp, cached.parent)  # or another process did first: the same graph
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return core.read_model(str(cached))


def open_compiled(model: CompiledModel, runtime: str, handle: str, *, batch_size: int = 32,
                  precision: str = "fp32", device: str = "auto") -> BatchingEmbedder:
    """The compiled FP32 model on a runtime and device (simsearch.devices); precision bf16 runs it in
    BF16 (OpenVINO's CPU plugin only)."""
    if precision != "fp32" and runtime != "openvino":
        raise ModelError(f"precision {precision} runs on OpenVINO, not {runtime}")
    match runtime:
        case "onnxruntime":
            return OnnxRuntimeEmbedder(model, handle, batch_size=batch_size, device=device)
        case "openvino":
            return OpenVinoEmbedder(model, handle, batch_size=batch_size, precision=precision, device=device)
        case _:
            raise ModelError(f"no compiled runtime {runtime!r}")


def check_images(size: tuple[int, int], n: int = 8, seed: int = 0) -> np.ndarray:
    """Photo-like uint8 images (smooth colour fields and discs) on which a compiled model must match
    TensorFlow: deterministic, so the check is the same everywhere."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        img = np.empty((h, w, 3), np.float32)
        for c in range(3):
            a, b, p = rng.uniform(-1, 1, 3)
            img[..., c] = 128 + 100 * np.sin(a * xx / (w / 13) + b * yy / (h / 10) + p * 6)
        for _ in range(5):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(h / 30, h / 3)
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
        out[i] = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    return out


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())

