"""A store's model: what built its vectors (recorded in the catalog) and the embedder, loaded on first use.

A store is tied to its model by content: the module's fingerprint where it is known, else its handle.
The same module from a URL, a folder or a moved copy opens the store; a different one, another
resize policy or another precision is refused, because vectors of different models cannot be mixed.
The model loads lazily, once, under a lock: stats, failures, an unchanged re-index and queries by id or
vector never load it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import Catalog
from .config import (
    DEFAULT_MODEL,
    DEFAULT_DEVICE,
    DEFAULT_PRECISION,
    DEVICES,
    DEFAULT_RESIZE,
    DEFAULT_RUNTIME,
    PRECISIONS,
    RUNTIME_ENV,
    RUNTIMES,
    ModelSpec,
    Settings,
    user_default,
)
from .embedder import load_embedder
from .embedding import Embedder
from .errors import ImageError, ModelMismatchError, SimsearchError, StoreError
from .handles import local_fingerprint, normalize_handle
from .formats import find_images
from .prepare import Decoding
from . import cpu, precision as precisions
from .quantize import CALIBRATION_PHOTOS, INT8_DIR, open_int8, quantize_int8

log = logging.getLogger(__name__)


def resolve_settings(settings: Settings, recorded: dict[str, Any] | None) -> Settings:
    """Fill what the caller left open from the store's record, the environment, then the defaults."""
    rec = recorded or {}
    resize = settings.resize or rec.get("resize") or DEFAULT_RESIZE
    asked = settings.precision
    if rec:  # stores made before precision was recorded are fp32; auto asks for the store's own
        precision = rec.get("precision", "fp32") if asked in (None, "auto") else asked
    else:  # a user's default applies to new stores only; auto is settled when the store is made (record)
        precision = asked or user_default("precision") or DEFAULT_PRECISION
        if precision not in PRECISIONS:
            raise SimsearchError(f"precision {precision!r} (from SIMSEARCH_PRECISION or the config file) is not "
                                 f"one of {', '.join(PRECISIONS)}")
    runtime = settings.runtime or user_default("runtime") or DEFAULT_RUNTIME
    if runtime not in RUNTIMES:
        raise SimsearchError(f"runtime {runtime!r} (from {RUNTIME_ENV} or the config file) is not one of {', '.join(RUNTIMES)}")
    if precision in ("int8", "bf16"):
        runtime = "openvino"  # the only runtime that runs them (simsearch.quantize, simsearch.runtimes)
    device = settings.device or user_default("device") or DEFAULT_DEVICE
    if device not in DEVICES:
        raise SimsearchError(f"device {device!r} (from SIMSEARCH_DEVICE or the config file) is not one of "
                             f"{', '.join(DEVICES)}")
    return replace(settings, resize=resize, precision=precision, runtime=runtime, device=device)


class StoreModel:
    """The model of one store: its recorded provenance, the checks against it, and the loaded embedder."""

    def __init__(self, root: Path, catalog: Catalog, model: str | os.PathLike[str] | Embedder | None,
                 settings: Settings) -> None:
        self.root, self.catalog = root, catalog
        self.recorded: dict[str, Any] | None = catalog.get_meta("model")
        self._asked = settings
        self.settings = resolve_settings(settings, self.recorded)
        self._arg = model if model is not None else user_default("model") or None
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()
        self.load_seconds = 0.0  # time spent loading it from its handle (0 when handed in ready)
        self._int8_sha256 = ""  # of the INT8 model quantized for this new store, once it is
        self._check()
        self._record_fingerprint()

    @property
    def handle(self) -> str:
        arg = self._arg
        if isinstance(arg, Embedder):
            return arg.spec.handle
        if arg is not None:
            return normalize_handle(arg)
        return self.recorded["model"] if self.recorded else DEFAULT_MODEL

    @property
    def from_handle(self) -> bool:
        """Whether the model is loaded from a handle (as Ray workers must), not handed in as an object."""
        return not isinstance(self._arg, Embedder)

    @property
    def loaded(self) -> bool:
        return self._embedder is not None

    @property
    def dim(self) -> int:
        return int(self.recorded["dim"]) if self.recorded else self.embedder.spec.dim

    @property
    def input_size(self) -> tuple[int, int]:
        """Known from the store without loading the model, so an unchanged folder re-indexes in seconds."""
        if self.recorded:
            h, w = self.recorded["input_size"]
            return int(h), int(w)
        return self.embedder.spec.input_size

    @property
    def decoding(self) -> Decoding:
        """How photos become this model's input (the resize policy resolved, never None)."""
        return Decoding.of(self.input_size, self.settings)

    @property
    def fingerprint(self) -> str | None:
        return (self.recorded or {}).get("fingerprint")

    @property
    def spec(self) -> ModelSpec:
        """The store's model as recorded, with the runtime this process runs it on."""
        s = self.settings
        return ModelSpec(self.handle, self.input_size, self.dim, self.fingerprint, runtime=str(s.runtime),
                         precision=str(s.precision))

    # checks ------------------------------------------------------------------------------------
    def _same_model(self, spec: ModelSpec | None) -> bool:
        """Identity by content: the module's fingerprint where both sides have one, else the handle.
        Before the model is loaded, a handle whose files are not here yet (a URL not fetched) passes;
        its content is checked once it is loaded."""
        rec = self.recorded
        assert rec is not None
        rec_fp = rec.get("fingerprint")
        if spec is not None:
            if spec.fingerprint and rec_fp:
                return spec.fingerprint == rec_fp
            return spec.handle == rec["model"] or (spec.fingerprint is not None and spec.fingerprint ==
                                                    local_fingerprint(rec["model"]))
        handle = self.handle
        if not self.from_handle or handle == rec["model"]:
            return handle == rec["model"]
        arg_fp = local_fingerprint(handle)
        if arg_fp is None:
            return True  # not fetched yet: checked by content once loaded
        return arg_fp == (rec_fp or local_fingerprint(rec["model"]))

    def _check(self, spec: ModelSpec | None = None) -> None:
        rec, s = self.recorded, self.settings
        if not rec:
            return
        problems = []
        if not self._same_model(spec):
            problems.append(f"model {spec.handle if spec else self.handle}"
                            + (f" (content {spec.fingerprint})" if spec and spec.fingerprint else ""))
        if s.resize != rec.get("resize"):
            problems.append(f"resize policy {s.resize!r}")
        if s.precision != rec.get("precision", "fp32"):
            problems.append(f"precision {s.precision}")
        if spec is not None and (spec.dim != rec["dim"] or list(spec.input_size) != rec["input_size"]):
            problems.append(f"a model of {spec.dim} dimensions at {spec.input_size[0]}x{spec.input_size[1]}")
        if problems:
            raise ModelMismatchError(
                f"store {self.root} was built with model {rec['model']} "
                f"({'content ' + rec['fingerprint'] + ', ' if rec.get('fingerprint') else ''}{rec['dim']} "
                f"dimensions, input {rec['input_size'][0]}x{rec['input_size'][1]}, resize {rec.get('resize')!r}, "
                f"precision {rec.get('precision', 'fp32')}), but this run uses {', '.join(problems)}. Vectors of "
                f"different models cannot be mixed: use the store's model, or another --store."
            )

    def _record_fingerprint(self, spec: ModelSpec | None = None) -> None:
        """Stores made before models were identified by content learn their module's fingerprint on the
        first open where its files are here (or once the model is loaded)."""
        rec = self.recorded
        if not rec or rec.get("fingerprint") or not self.from_handle:
            return
        fp = spec.fingerprint if spec is not None else local_fingerprint(rec["model"])
        if fp is None:
            return
        rec = {**rec, "fingerprint": fp}
        try:
            self.catalog.set_meta(model=rec)
        except StoreError as exc:  # a read-only or busy catalog: the store works as before, and learns later
            log.warning("could not record the model's fingerprint in %s: %s", self.root, exc)
            return
        self.recorded = rec

    def refresh(self) -> None:
        """Learn a model recorded by another process since this one opened the store (a server started on an
        empty store while `simsearch index` made it): never record a second one over it."""
        if self.recorded:
            return  # a store's model never changes once recorded
        rec = self.catalog.get_meta("model")
        if not rec:
            return
        self.recorded = rec
        self.settings = resolve_settings(self._asked, rec)
        self._check(self._embedder.spec if self._embedder is not None else None)

    # loading -----------------------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        """Loaded on first use, once: two server threads must not load it twice."""
        with self._lock:
            if self._embedder is None:
                t = time.perf_counter()
                emb = self._load()
                self._check(emb.spec)
                self._record_fingerprint(emb.spec)
                self._embedder = emb
                if emb is not self._arg:  # loaded from a handle now, not handed in ready
                    self.load_seconds = time.perf_counter() - t
            return self._embedder

    def _load(self) -> Embedder:
        s, rec = self.settings, self.recorded or {}
        if not self.from_handle:
            if s.precision == "int8":
                raise SimsearchError("precision int8 quantizes the model from its handle: open the store "
                                     "with a model URL or folder, not an Embedder object")
            return self._arg  # type: ignore[return-value]
        if s.precision == "int8" and rec:
            return open_int8(self.root / INT8_DIR, self.handle, sha256=rec.get("int8_sha256", ""),
                             batch_size=s.batch_size)
        # fp32 or bf16; or a new int8 or auto store's starting point (see record)
        return load_embedder(self.handle, runtime=s.runtime, fingerprint=rec.get("fingerprint"),
                             batch_size=s.batch_size, precision="bf16" if s.precision == "bf16" else "fp32",
                             device=str(s.device))

    # a new store ------------------------------------------------------------------------------
    def record(self, folder: Path | None = None) -> bool:
        """A new store's first write: load the model (int8: quantize it on the folder's photos) and
        record what it is. Returns whether it was new."""
        if self.recorded:
            return False
        extra: dict[str, Any] = {}
        t = time.perf_counter()  # choosing or quantizing counts as loading: the run's rate excludes it
        if self.settings.precision == "auto":
            choice = self._choose(folder)
            extra["precision_choice"] = choice.as_meta()
            self.settings = replace(self.settings, precision=choice.precision,
                                    runtime="openvino" if choice.precision != "fp32" else self.settings.runtime)
            log.info("precision %s for this store: %s", choice.precision, choice.reason)
            if choice.precision == "int8":
                extra["int8_sha256"] = self._int8_sha256
        elif self.settings.precision == "int8":
            if folder is None:
                raise SimsearchError("an int8 store is created by indexing a folder: its photos calibrate the model")
            extra["int8_sha256"] = self._quantize(folder)
        preparing = time.perf_counter() - t
        spec = self.embedder.spec
        if extra:  # a precision was chosen, or the model quantized
            self.load_seconds += preparing
        s = self.settings
        rec = {**spec.as_meta(), **extra, "resize": s.resize, "preprocessing":
               f"RGB float32 in [0,1]; EXIF-oriented; alpha on white; resize={s.resize}, bilinear"}
        self.catalog.set_meta(model=rec)
        self.recorded = rec
        return True

    def _sample(self, folder: Path, n: int) -> np.ndarray:
        """Model inputs of up to n photos spread over the folder (by path order)."""
        files = sorted(find_images(folder))
        step = max(1, len(files) // n)
        photos = []
        for path in files[::step][:n]:
            try:
                photos.append(self.decoding.load(str(path))[0])
            except ImageError:
                continue  # recorded as a failure when it is indexed
        h, w = self.input_size
        return np.stack(photos) if photos else np.zeros((0, h, w, 3), np.uint8)

    def _choose(self, folder: Path | None) -> precisions.Choice:
        """auto: the fastest precision that passes the gate on the folder's photos (simsearch.precision);
        the embedder becomes the chosen one."""
        if not self.from_handle:
            return precisions.Choice("fp32", 0, [], "the model was handed in as an object: it runs as it is")
        if folder is None:
            return precisions.Choice("fp32", 0, [], "no folder to measure on")
        fp32 = self.embedder
        if getattr(fp32, "compiled", None) is None:
            return precisions.Choice("fp32", 0, [], "the model runs on TensorFlow here, not compiled")
        s, rec_fp = self.settings, fp32.spec.fingerprint
        makers: dict[str, Callable[[], Embedder]] = {}
        if cpu.has_bf16():
            makers["bf16"] = lambda: load_embedder(self.handle, runtime="openvino", fingerprint=rec_fp,
                                                   batch_size=s.batch_size, precision="bf16")
        if cpu.has_int8():
            makers["int8"] = lambda: self._int8_candidate(folder)
        made: dict[str, Embedder] = {"fp32": fp32}  # each candidate built once: the one kept is used as it is

        def keeping(name: str) -> Callable[[], Embedder]:
            def make() -> Embedder:
                made[name] = makers[name]()
                return made[name]
            return make

        sample = self._sample(folder, precisions.SAMPLE_PHOTOS)
        log.info("choosing this store's precision: fp32 against %s on %d photos of %s (once) ...",
                 ", ".join(makers) or "nothing faster on this CPU", len(sample), folder)
        choice = precisions.auto(sample, fp32, {name: keeping(name) for name in makers})
        chosen = choice.precision
        emb = made[chosen]
        if chosen != "int8" and (self.root / INT8_DIR).exists():
            import shutil

            shutil.rmtree(self.root / INT8_DIR, ignore_errors=True)  # a candidate that was not kept
        with self._lock:
            self._embedder = emb
        return choice

    def _int8_candidate(self, folder: Path) -> Embedder:
        import importlib.util

        if importlib.util.find_spec("nncf") is None:
            from .errors import ModelError

            raise ModelError("NNCF is not installed (pip install 'simsearch[int8]')")
        self._int8_sha256 = self._quantize(folder)
        return self.embedder

    def _quantize(self, folder: Path) -> str:
        """Quantize the compiled fp32 model on photos spread over the folder; the embedder becomes the
        int8 one. Returns the int8 model's sha256."""
        compiled = getattr(self.embedder, "compiled", None)
        if compiled is None:
            raise SimsearchError("precision int8 needs the compiled model, but it runs on TensorFlow here "
                                 "(see the warning above, or drop --runtime tensorflow)")
        photos = self._sample(folder, CALIBRATION_PHOTOS)
        log.info("quantizing the model to int8 on %d photos of %s (once for this store) ...", len(photos), folder)
        model = quantize_int8(compiled, photos, self.root / INT8_DIR)
        with self._lock:
            self._embedder = open_int8(self.root / INT8_DIR, self.handle, sha256=model.meta["sha256"],
                                       batch_size=self.settings.batch_size)
        return str(model.meta["sha256"])
