"""Test models are built once per session, in the TF-Hub formats users load, and loaded by the product's code."""

from __future__ import annotations

import os
import secrets
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Compiled models go to a cache of this test session's own, never the user's (~/.cache/simsearch).
os.environ["SIMSEARCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="simsearch-test-cache-")
# Ray (2.60 on) authenticates by token when RAY_AUTH_MODE=token is set before Ray is imported, on every node
# and driver; `ray start --head` then refuses to start without a token (it makes none), so this session's
# clusters get one of their own, in the environment their `ray start` processes and drivers inherit (a fresh
# machine has no ~/.ray/auth_token, and the user's is not touched): the Ray tests run as users' clusters do.
# New stores choose their precision by measuring this CPU (`auto`, simsearch.precision): the suite's stores
# are FP32 unless a test asks otherwise, so that what they assert does not hang on the machine's BF16 units.
os.environ.setdefault("SIMSEARCH_PRECISION", "fp32")
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

from simsearch.embedder import HubEmbedder  # noqa: E402

from . import modules  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COREL = ROOT.parent / "shared" / "data" / "corel1k"
TRAINED = ROOT.parent / "shared" / "data" / "mobilenet_v2_trained"
TINY_SIZE = (64, 64)
# A PostgreSQL server for the catalog suite: an URL whose role may CREATE DATABASE (.ci/run starts one).
POSTGRES_ENV = "SIMSEARCH_TEST_POSTGRES"
DATABASES = ["sqlite", "postgresql"]


@contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    """A fresh, empty catalog database of this kind; a PostgreSQL one is dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'catalog.sqlite'}"
        return
    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        reason = f"no PostgreSQL server: set {POSTGRES_ENV}=postgresql+psycopg://USER:PASSWORD@HOST/DB (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI starts one: never let its PostgreSQL tests pass by skipping
        pytest.skip(reason)
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"simsearch_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            # a linguistic collation, as many servers default to: catalog paths must still compare byte-wise
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu '
                              f"ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"))
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        _drop(admin, name)
        admin.dispose()


def _drop(admin: Any, name: str) -> None:
    """DROP DATABASE ... WITH (FORCE) cannot end an autovacuum worker (it runs as the superuser, and the
    test role may not signal it): one that happens to be in the fresh database is waited out."""
    from sqlalchemy import text
    from sqlalchemy.exc import ProgrammingError

    for attempt in range(40):
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except ProgrammingError as exc:
            if "pg_signal_backend" not in str(exc) or attempt == 39:
                raise
            time.sleep(0.25)


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that takes it runs on SQLite and on PostgreSQL."""
    with database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(scope="session")
def tiny_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return modules.build_tf1_hub_module(tmp_path_factory.mktemp("modules") / "tiny", modules.tiny, TINY_SIZE)


@pytest.fixture(scope="session")
def inception_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full Inception V2 architecture with seeded random weights (about 20 s to build)."""
    return modules.build_tf1_hub_module(tmp_path_factory.mktemp("modules") / "inception_v2", modules.inception_v2)


@pytest.fixture(scope="session")
def tf2_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return modules.build_tf2_saved_model(tmp_path_factory.mktemp("modules") / "tf2")


@pytest.fixture(scope="session")
def classifier_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classification module in the TF-Hub format: `image_classification` -> 1001 logits."""
    return modules.build_tf1_hub_module(tmp_path_factory.mktemp("modules") / "classifier", modules.tiny_classifier,
                                        TINY_SIZE, seed=3)


@pytest.fixture(scope="session")
def tiny_embedder(tiny_module: Path) -> HubEmbedder:
    return HubEmbedder(tiny_module)


@pytest.fixture()
def home_trash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real send2trash into a freedesktop home trash of the test's own (on the photos' disk, as
    send2trash decides), which simsearch.trash reads back; returns the trash folder."""
    import send2trash.plat_other as plat

    xdg = tmp_path / "xdg"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(xdg))
    monkeypatch.setattr(plat, "XDG_DATA_HOME", os.fsencode(xdg))  # read by send2trash when it is imported
    monkeypatch.setattr(plat, "HOMETRASH_B", os.fsencode(xdg / "Trash"))
    return xdg / "Trash"


@pytest.fixture(scope="session")
def corel_images() -> Path:
    images = COREL / "images"
    if not images.is_dir():
        reason = f"shared test data not found at {images} (expected ../shared beside the checkout)"
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI has ../shared beside the clone: never let the Corel tests pass by skipping
        pytest.skip(reason)
    return images.resolve()  # the store records resolved paths; ../shared may be a symlink


@pytest.fixture(scope="session")
def trained_embedder() -> HubEmbedder:
    """A trained network in the TF-Hub format (../shared): the judge of fidelity, where random weights see
    every photo alike. Never the product's model: its figures are not Inception V2's."""
    if not (TRAINED / "saved_model.pb").is_file():
        reason = f"the trained stand-in was not found at {TRAINED} (expected ../shared beside the checkout)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return HubEmbedder(TRAINED.resolve())


def photo(path: Path, seed: int, size: tuple[int, int] = (160, 120), fmt: str | None = None, **save: object) -> Path:
    """A distinct, photo-like image: smooth colour gradients plus seeded blobs."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 100 * np.sin(a * xx / 17 + b * yy / 23 + p * 6)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, min(w, h) / 3)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, fmt, **save)
    return path
