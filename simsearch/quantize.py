"""INT8: the compiled FP32 model quantized after training, calibrated on the store's own photos.

NNCF's post-training quantization on OpenVINO (per-channel symmetric weights, per-tensor activations
from the calibration photos' ranges, fast bias correction), run once when a store is created with
`--precision int8`. The result is the store's: it lives in the store folder (model-int8/), its
SHA-256 is recorded in the store, and INT8 and FP32 vectors never meet in one store. It runs on
OpenVINO (the CPU's VNNI or AMX instructions carry the gain; without them INT8 is not worth it).
Measured in bench/runtime.py; the README has the figures and why FP32 stays the default.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .errors import ModelError
from .files import publish_dir
from .images import to_model_input
from .runtimes import META_FILE, CompiledModel, OpenVinoEmbedder, min_cosine

INT8_DIR = "model-int8"
INT8_FILE = "model.xml"  # and model.bin beside it
CALIBRATION_PHOTOS = 300
MIN_CALIBRATION_PHOTOS = 10
INT8_MIN_COSINE = 0.99  # to the FP32 model, on calibration photos held out of the calibration


def _sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in (INT8_FILE, "model.bin"):
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()


def quantize_int8(fp32: CompiledModel, photos: np.ndarray, folder: Path) -> CompiledModel:
    """Quantize with one in five photos held out to check the result; publish to folder (replacing a
    leftover from an earlier, failed store creation)."""
    try:
        import nncf
        import openvino as ov
    except ImportError as exc:
        raise ModelError("precision int8 needs NNCF: pip install 'simsearch[int8]'") from exc
    if len(photos) < MIN_CALIBRATION_PHOTOS:
        raise ModelError(f"int8 calibration needs at least {MIN_CALIBRATION_PHOTOS} photos, found {len(photos)}")
    t0 = time.perf_counter()
    held = np.arange(len(photos)) % 5 == 4
    calibration = [to_model_input(photos[i : i + 1]) for i in np.flatnonzero(~held)]
    logging.getLogger("nncf").setLevel(logging.ERROR)  # its notes are not for users
    core = ov.Core()
    try:  # nor its progress bars, least of all on stdout, where `--json` output goes
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            quantized = nncf.quantize(core.read_model(str(fp32.path)), nncf.Dataset(calibration),
                                      subset_size=len(calibration))
    except Exception as exc:
        raise ModelError(f"int8 quantization failed: {exc}") from exc
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        ov.save_model(quantized, str(tmp / INT8_FILE), compress_to_fp16=False)
        meta = {**fp32.meta, "precision": "int8", "file": INT8_FILE, "calibration_photos": len(calibration),
                "sha256": _sha256(tmp), "quantizer": f"nncf {nncf.__version__}, openvino {ov.__version__}"}
        candidate = CompiledModel(tmp, meta)
        cosine = min_cosine(OpenVinoEmbedder(candidate, meta["handle"]).embed(photos[held]),
                            OpenVinoEmbedder(fp32, meta["handle"]).embed(photos[held]))
        if not cosine >= INT8_MIN_COSINE:
            raise ModelError(f"the int8 model strays too far from fp32 on this folder's photos (minimum cosine "
                             f"{cosine:.4f} < {INT8_MIN_COSINE}): use --precision fp32")
        meta |= {"min_cosine_to_fp32": round(cosine, 6), "quantize_seconds": round(time.perf_counter() - t0, 1)}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        publish_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CompiledModel(folder, meta)


def open_int8(folder: Path, handle: str, *, sha256: str, batch_size: int = 32) -> OpenVinoEmbedder:
    """The store's INT8 model, refused unless it is the one the store recorded."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
        actual = _sha256(folder)
    except (OSError, ValueError) as exc:
        raise ModelError(f"the store's int8 model in {folder} is missing or unreadable ({exc}); it cannot be "
                         f"remade with the same calibration: index into a new store") from exc
    if actual != sha256:
        raise ModelError(f"the int8 model in {folder} is not the one this store was built with "
                         f"(sha256 {actual[:12]}..., recorded {sha256[:12]}...)")
    return OpenVinoEmbedder(CompiledModel(folder, meta), handle, batch_size=batch_size)
