"""Settings and model provenance as frozen dataclasses."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL = "https://tfhub.dev/google/imagenet/inception_v2/feature_vector/1"
DEFAULT_INPUT_SIZE = (224, 224)
RESIZE_POLICIES = ("whole", "center-crop")
# Chosen by measurement on corel1k (see README "Preprocessing"); "whole" keeps the full scene.
DEFAULT_RESIZE = "whole"
# Pillow raises DecompressionBombError at twice its warning limit; we refuse at the same size, with our own message.
DEFAULT_MAX_PIXELS = 2 * 89_478_485
# Where the model runs. "tensorflow" runs the module itself; the others run it compiled once per module
# (see simsearch.runtimes), proven equal to TensorFlow's vectors when compiled. Chosen by measurement: README.
RUNTIMES = ("onnxruntime", "openvino", "tensorflow")
DEFAULT_RUNTIME = "onnxruntime"
RUNTIME_ENV = "SIMSEARCH_RUNTIME"
MODEL_ENV = "SIMSEARCH_MODEL"  # read in one place: simsearch.provenance
STORE_ENV = "SIMSEARCH_STORE"  # read in one place: default_store_dir
PRECISIONS = ("fp32", "int8")
DEFAULT_PRECISION = "fp32"


@dataclass(frozen=True)
class ModelSpec:
    """What a vector means: which model made it, from which input size, with which preprocessing."""

    handle: str
    input_size: tuple[int, int]  # (height, width)
    dim: int
    fingerprint: str | None = None  # the module's content (simsearch.handles.fingerprint); None: not a module
    runtime: str = "tensorflow"  # where it runs: not provenance, every runtime gives the same vectors
    precision: str = DEFAULT_PRECISION

    def as_meta(self) -> dict[str, object]:
        return {"model": self.handle, "fingerprint": self.fingerprint, "input_size": list(self.input_size),
                "dim": self.dim, "precision": self.precision}


@dataclass(frozen=True)
class Settings:
    """Knobs of indexing; the defaults suit a 2-4 core laptop."""

    batch_size: int = 32
    # Decode threads (Pillow releases the GIL). One more than the cores keeps a decoded batch ready while
    # TensorFlow holds them: 0.87x model-only speed on 4-megapixel JPEGs with 2 cores, 0.83x with 2 threads.
    workers: int = field(default_factory=lambda: min(8, (os.cpu_count() or 2) + 1))
    resize: str | None = None  # None: the store's own policy, or DEFAULT_RESIZE for a new store
    max_pixels: int = DEFAULT_MAX_PIXELS
    save_every_s: float = 60.0  # how often the FAISS file is checkpointed during a long run
    # Past this many vectors `index` moves the store to an approximate IVF-SQ8 index (see Store.optimize).
    ann_threshold: int = 200_000
    runtime: str | None = None  # None: $SIMSEARCH_RUNTIME, else DEFAULT_RUNTIME
    precision: str | None = None  # None: the store's own, or DEFAULT_PRECISION for a new store

    def __post_init__(self) -> None:
        if self.runtime is not None and self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.resize is not None and self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")


def default_store_dir() -> Path:
    """SIMSEARCH_STORE, else the per-user data dir ($XDG_DATA_HOME/simsearch or ~/.local/share/simsearch)."""
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "simsearch"
