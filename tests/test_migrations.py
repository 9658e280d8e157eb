"""Stores survive upgrades: a store written by release 0.1.0 (tests/data/store-0.1.0) opens, upgrades in
place and keeps working; the revisions make exactly the schema the models describe; a newer catalog is
refused; a failed upgrade changes nothing."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from simsearch import Store
from simsearch.catalog import SCHEMA_VERSION, Base, Catalog
from simsearch.catalog.migrate import MIGRATIONS, backup_path
from simsearch.errors import StoreError

from .conftest import database, photo

RELEASE = Path(__file__).parent / "data" / "store-0.1.0"


def _table_sql(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as c:
        return dict(c.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name != 'alembic_version'"))


def _rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as c:
        return c.execute(sql).fetchall()


@pytest.fixture
def release_store(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the store release 0.1.0 wrote, and of the module it was built with."""
    shutil.copytree(RELEASE, tmp_path / "release")
    return tmp_path / "release" / "store", tmp_path / "release" / "module"


def _schema_diff(conn) -> list:
    """Alembic's comparison of the database with the models; types compared as the database spells them
    (a path column is TEXT COLLATE "C" on PostgreSQL, which Alembic cannot see through the TypeDecorator)."""
    def same_type(_ctx, _col, _meta_col, inspected, metadata):  # noqa: ANN001
        return inspected.compile(dialect=conn.dialect) != metadata.compile(dialect=conn.dialect)

    return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": same_type}), Base.metadata)


def _alembic(conn) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def test_a_store_from_release_0_1_0_upgrades_indexes_and_queries(release_store: tuple[Path, Path], tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    store_dir, module = release_store
    catalog = store_dir / "catalog.sqlite"
    before = _rows(catalog, "SELECT id, path, sha256, status, error FROM images ORDER BY id")
    vectors_before = _rows(catalog, "SELECT image_id, data FROM vectors ORDER BY image_id")
    assert len(before) == 7 and "decoded_from" not in _table_sql(catalog)["images"]

    with caplog.at_level("INFO", logger="simsearch"):
        store = Store(store_dir, model=str(module))
    kept = backup_path(catalog, 1)
    assert f"from schema version 1 to {SCHEMA_VERSION}" in caplog.text and str(kept) in caplog.text
    # the copy set aside is the catalog as release 0.1.0 left it
    assert "decoded_from" not in _table_sql(kept)["images"]
    assert _rows(kept, "SELECT id, path, sha256, status, error FROM images ORDER BY id") == before
    assert _rows(catalog, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    # nothing of the old store is lost: rows, vectors, the remembered exclude, the failure
    assert _rows(catalog, "SELECT id, path, sha256, status, error FROM images ORDER BY id") == before
    assert _rows(catalog, "SELECT image_id, data FROM vectors ORDER BY image_id") == vectors_before
    stats = store.stats()
    assert (stats.images, stats.failed) == (6, 1)
    assert store.catalog.get_meta("folder_options") == {"/tmp/simsearch-release-photos": {"exclude": ["skip_*"],
                                                                                         "include_hidden": False}}
    old = store.query(2, k=3)
    assert old[0].id == 2 and old[0].decoded_from is None  # indexed before the column existed

    folder = tmp_path / "new"
    photo(folder / "big.jpg", seed=7, size=(1600, 1200), quality=90)  # decoded at reduced size
    photo(folder / "small.png", seed=8)
    report = store.index(folder)
    assert (report.added, report.failed) == (2, 0)
    hits = store.query(folder / "big.jpg", k=8)
    assert hits[0].path == str(folder / "big.jpg") and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert {h.path: h.decoded_from for h in hits if "new" in h.path} == {str(folder / "big.jpg"): "scaled",
                                                                         str(folder / "small.png"): "full"}
    assert len(hits) == 8  # the old photos are still searchable beside the new
    store.close()

    again = Store(store_dir, model=str(module))  # opening an upgraded store does no more work
    assert again.stats().images == 8
    again.close()
    assert kept.stat().st_mtime_ns == backup_path(catalog, 1).stat().st_mtime_ns


def test_revision_0001_is_the_schema_release_0_1_0_wrote(tmp_path: Path) -> None:
    """Stores made before Alembic are stamped 0001: that revision must make exactly their tables."""
    engine = create_engine(f"sqlite:///{tmp_path / 'c.sqlite'}")
    with engine.begin() as conn:
        command.upgrade(_alembic(conn), "0001")
    engine.dispose()
    assert _table_sql(tmp_path / "c.sqlite") == _table_sql(RELEASE / "store" / "catalog.sqlite")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_revisions_make_the_schema_the_models_describe(kind: str, tmp_path: Path) -> None:
    with database(kind, tmp_path) as url:
        catalog = Catalog(url)
        with catalog.engine.connect() as conn:
            diff = _schema_diff(conn)
            version = conn.scalar(text("SELECT version_num FROM alembic_version"))
        catalog.close()
        assert diff == [] and version == f"{SCHEMA_VERSION:04d}"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_catalog_of_schema_1_is_upgraded_in_place(kind: str, tmp_path: Path) -> None:
    """What 0.1.0 left (revision 0001's tables, no alembic_version), with a row in it, on either database."""
    with database(kind, tmp_path) as url:
        engine = create_engine(url)
        with engine.begin() as conn:
            command.upgrade(_alembic(conn), "0001")
            conn.execute(text("DROP TABLE alembic_version"))
            conn.execute(text("INSERT INTO images (path, indexed_at, status) VALUES ('/p/a.jpg', '2026-01-01', 'ok')"))
        engine.dispose()
        catalog = Catalog(url)
        rows = catalog.records([1])
        assert rows[1]["path"] == "/p/a.jpg" and rows[1]["decoded_from"] is None
        assert catalog.get_meta("schema_version") == SCHEMA_VERSION
        with catalog.engine.connect() as conn:
            assert _schema_diff(conn) == []
        catalog.close()
        assert (tmp_path / "catalog.sqlite.schema-1.bak").exists() == (kind == "sqlite")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_catalog_written_by_a_newer_simsearch_is_refused_with_both_versions(kind: str, tmp_path: Path) -> None:
    with database(kind, tmp_path) as url:
        Catalog(url).close()
        engine = create_engine(url)
        with engine.begin() as conn:
            newer = SCHEMA_VERSION + 1
            conn.execute(text(f"UPDATE alembic_version SET version_num = '{newer:04d}'"))
            conn.execute(text(f"UPDATE meta SET value = '{newer}' WHERE key = 'schema_version'"))
        engine.dispose()
        with pytest.raises(StoreError, match=f"schema version {newer}, written by a newer simsearch; this one "
                                             f"reads up to version {SCHEMA_VERSION}"):
            Catalog(url)


def test_a_failed_upgrade_changes_nothing(release_store: tuple[Path, Path]) -> None:
    """The stamp and every revision are one transaction: an upgrade that fails half way leaves the catalog
    exactly as it was (here the column revision 0002 adds is already there, so adding it fails)."""
    store_dir, module = release_store
    catalog = store_dir / "catalog.sqlite"
    with sqlite3.connect(catalog) as c:
        c.execute("ALTER TABLE images ADD COLUMN decoded_from TEXT")
    before = _table_sql(catalog), _rows(catalog, "SELECT * FROM meta ORDER BY key")
    with pytest.raises(StoreError, match="duplicate column"):
        Store(store_dir, model=str(module))
    assert (_table_sql(catalog), _rows(catalog, "SELECT * FROM meta ORDER BY key")) == before
    assert _rows(catalog, "SELECT name FROM sqlite_master WHERE name = 'alembic_version'") == []


def test_two_processes_opening_an_old_store_at_once_upgrade_it_once(release_store: tuple[Path, Path]) -> None:
    store_dir, _ = release_store
    url = f"sqlite:///{store_dir / 'catalog.sqlite'}"
    errors: list[BaseException] = []
    opened: list[Catalog] = []

    def open_it() -> None:
        try:
            opened.append(Catalog(url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(opened) == 4
    assert all(c.get_meta("schema_version") == SCHEMA_VERSION for c in opened)
    assert all(np.isfinite(c.vector(2, 32)).all() for c in opened)
    assert backup_path(store_dir / "catalog.sqlite", 1).exists()
    for c in opened:
        c.close()
