"""Settings and model provenance as frozen dataclasses; the user's defaults (environment, config file).

Defaults for the store, model, catalog, runtime and excluded files come from, in order: the call's
own arguments (or the command line), the environment (SIMSEARCH_STORE, SIMSEARCH_MODEL, SIMSEARCH_DB,
SIMSEARCH_RUNTIME), the config file (`config_path()`: TOML), then simsearch's defaults. `user_default`
is the one place that reads the environment and the file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SimsearchError

DEFAULT_MODEL = "https://tfhub.dev/google/imagenet/inception_v2/feature_vector/1"
DEFAULT_INPUT_SIZE = (224, 224)
RESIZE_POLICIES = ("whole", "center-crop")
# Chosen by measurement on corel1k (see README "Preprocessing"); "whole" keeps the full scene.
DEFAULT_RESIZE = "whole"
# Pillow raises DecompressionBombError at twice its warning limit; we refuse at the same size, with our own message.
DEFAULT_MAX_PIXELS = 2 * 89_478_485
# Larger files are refused unread: generous for camera RAW (a 100-megapixel RAW is ~200 MB).
DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024
# Where the model runs. "tensorflow" runs the module itself; the others run it compiled once per module
# (see simsearch.runtimes), proven equal to TensorFlow's vectors when compiled. Chosen by measurement: README.
RUNTIMES = ("onnxruntime", "openvino", "tensorflow")
DEFAULT_RUNTIME = "onnxruntime"
RUNTIME_ENV = "SIMSEARCH_RUNTIME"
MODEL_ENV = "SIMSEARCH_MODEL"
PRECISION_ENV = "SIMSEARCH_PRECISION"
DEVICE_ENV = "SIMSEARCH_DEVICE"
STORE_ENV = "SIMSEARCH_STORE"
DB_ENV = "SIMSEARCH_DB"
CONFIG_ENV = "SIMSEARCH_CONFIG"
# config-file key -> (environment variable, type)
CONFIG_KEYS: dict[str, tuple[str | None, type]] = {
    "store": (STORE_ENV, str), "model": (MODEL_ENV, str), "db": (DB_ENV, str), "runtime": (RUNTIME_ENV, str),
    "precision": (PRECISION_ENV, str), "device": (DEVICE_ENV, str),
    "exclude": (None, list), "include_hidden": (None, bool),
}
STORE_PRECISIONS = ("fp32", "bf16", "int8")  # what a store is made in
PRECISIONS = ("auto", *STORE_PRECISIONS)  # what can be asked for: auto chooses at store creation
DEFAULT_PRECISION = "auto"
DEVICES = ("auto", "cpu", "gpu")  # where a compiled model runs (simsearch.devices)
DEFAULT_DEVICE = "auto"


@dataclass(frozen=True)
class ModelSpec:
    """What a vector means: which model made it, from which input size, with which preprocessing."""

    handle: str
    input_size: tuple[int, int]  # (height, width)
    dim: int
    fingerprint: str | None = None  # the module's content (simsearch.handles.fingerprint); None: not a module
    runtime: str = "tensorflow"  # where it runs: not provenance, every runtime gives the same vectors
    precision: str = "fp32"

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
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # files larger than this are failures, never read
    save_every_s: float = 60.0  # how often the FAISS file is checkpointed during a long run
    # Rows wait in memory at most this long (or until 1,024 of them) before their transaction: a crash loses
    # at most this much work, and a fast source (a Ray merge) writes in bulk instead of a model batch at a time.
    commit_every_s: float = 1.0
    # Past this many vectors `index` moves the store to an approximate IVF-SQ8 index (see Store.optimize).
    ann_threshold: int = 200_000
    runtime: str | None = None  # None: $SIMSEARCH_RUNTIME, else DEFAULT_RUNTIME
    precision: str | None = None  # None or auto: the store's own; for a new store $SIMSEARCH_PRECISION or auto
    device: str | None = None  # auto, cpu or gpu (simsearch.devices); None: $SIMSEARCH_DEVICE, else auto
    # Duplicate fingerprints' hashes taken from the decode that feeds the model (about 0.6 ms a photo; the
    # keypoints wait for `duplicates`). False: all taken by the first `duplicates` run, decoding again.
    fingerprints: bool = True

    def __post_init__(self) -> None:
        if self.runtime is not None and self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.device is not None and self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.commit_every_s < 0:
            raise ValueError(f"commit_every_s must be >= 0, got {self.commit_every_s}")
        if self.resize is not None and self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")


def config_path() -> Path:
    """$SIMSEARCH_CONFIG, else config.toml in the platform's config folder (~/.config/simsearch on Linux)."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("simsearch", appauthor=False)) / "config.toml"


def user_config() -> dict[str, Any]:
    """The config file's settings (none when it does not exist); unknown keys and wrong types are errors."""
    path = config_path()
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SimsearchError(f"cannot read config file {path}: {exc}") from exc
    for key, value in data.items():
        if key not in CONFIG_KEYS:
            raise SimsearchError(f"config file {path}: unknown setting {key!r} (known: {', '.join(CONFIG_KEYS)})")
        if not isinstance(value, CONFIG_KEYS[key][1]):
            raise SimsearchError(f"config file {path}: {key} must be a {CONFIG_KEYS[key][1].__name__}")
    return data


def user_default(key: str) -> Any:
    """A setting the caller left open: from the environment, else the config file, else None."""
    env = CONFIG_KEYS[key][0]
    if env and os.environ.get(env):
        return os.environ[env]
    return user_config().get(key)


def default_store_dir() -> Path:
    """SIMSEARCH_STORE or the config file's store, else the platform's per-user data folder
    (~/.local/share/simsearch on Linux, XDG_DATA_HOME respected)."""
    configured = user_default("store")
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("simsearch", appauthor=False))
