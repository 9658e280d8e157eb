"""Bring a catalog to the schema this simsearch reads, with Alembic (the revisions: migrations/versions).

A new catalog is made by the revisions themselves, so new and upgraded stores cannot drift apart. An
older one is upgraded in place, in one transaction, after a SQLite catalog file is copied aside; a newer
one (written by a later simsearch) is refused with both version numbers. Stores made before simsearch
used Alembic (schema 1, no `alembic_version` table) are stamped with their version first.

Every open pays one query when the catalog is current; Alembic is imported only when there is work.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from ..errors import StoreError
from .engine import tune_sqlite
from .schema import SCHEMA_VERSION

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
HEAD = f"{SCHEMA_VERSION:04d}"  # revision ids are the schema versions, zero-padded
_PG_LOCK = 0x51D5EA  # pg_advisory_xact_lock key: two processes migrating one catalog take turns


def backup_path(catalog_file: str | os.PathLike[str], version: int) -> Path:
    """Where a SQLite catalog at `version` is copied before it is upgraded."""
    return Path(f"{os.fspath(catalog_file)}.schema-{version}.bak")


def migrate(engine: Engine, sqlite_file: str | None, read_only: bool = False) -> None:
    """Make, upgrade or accept the catalog behind engine. sqlite_file: its file (SQLite on disk), else None."""
    if _is_current(engine):
        return
    if read_only:
        raise StoreError(f"catalog {sqlite_file} must be upgraded to schema version {SCHEMA_VERSION} and its disk "
                         f"is full: free some space, then run again")
    with _exclusive(engine, sqlite_file) as conn:
        found, stamped = _version(conn)
        if found is not None and found > SCHEMA_VERSION:
            raise StoreError(f"catalog {sqlite_file or engine.url.render_as_string(hide_password=True)} has schema "
                             f"version {found}, written by a newer simsearch; this one reads up to version "
                             f"{SCHEMA_VERSION}: install a newer simsearch to open it")
        if found == SCHEMA_VERSION and stamped:
            return  # another process upgraded it while this one waited
        kept = backup_path(sqlite_file, found) if sqlite_file and found is not None else None
        if kept is not None:
            _copy_aside(sqlite_file, kept)
        _run_alembic(conn, stamp=None if found is None or stamped else f"{found:04d}")
    if found is not None:
        log.info("upgraded catalog %s from schema version %d to %d%s", sqlite_file or engine.url.database, found,
                 SCHEMA_VERSION, f"; the catalog as it was is kept at {kept}" if kept else "")


def _is_current(engine: Engine) -> bool:
    """Both marks at this version: Alembic's revision, and the meta row that releases before Alembic read."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        revision = conn.scalar(text("SELECT version_num FROM alembic_version"))
        return revision == HEAD and _version(conn)[0] == SCHEMA_VERSION


def _version(conn: Connection) -> tuple[int | None, bool]:
    """The catalog's schema version (None: an empty database) and whether Alembic has stamped it."""
    insp = inspect(conn)
    stamped = insp.has_table("alembic_version")
    if not insp.has_table("meta"):
        return None, stamped
    value = conn.scalar(text("SELECT value FROM meta WHERE \"key\" = 'schema_version'"))
    try:
        return (None if value is None else int(json.loads(value))), stamped
    except (TypeError, ValueError) as exc:
        raise StoreError(f"catalog schema version {value!r} is not a number: this is not a catalog simsearch "
                         f"wrote") from exc


@contextmanager
def _exclusive(engine: Engine, sqlite_file: str | None) -> Iterator[Connection]:
    """One transaction that holds the catalog's write lock from its first statement, so that one process
    migrates and the others then find the work done. On SQLite the driver is told to leave transactions to
    SQLAlchemy (its default would commit before each CREATE or ALTER: no rollback of a half migration)."""
    if sqlite_file is None:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
            yield conn
        return
    own = create_engine(f"sqlite:///{sqlite_file}", poolclass=NullPool)

    @event.listens_for(own, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # no implicit transactions: BEGIN below is the only one
        tune_sqlite(dbapi_conn, foreign_keys=False)  # batch mode may copy a table: no cascades meanwhile

    @event.listens_for(own, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        with own.begin() as conn:
            yield conn
    finally:
        own.dispose()


def _copy_aside(sqlite_file: str, dest: Path) -> None:
    """SQLite's online backup of the catalog as it is (WAL included), written to a temp file, fsynced and
    renamed: a crash leaves either the whole copy or none. Read through a connection of its own: the
    migrating one holds the write lock, and SQLite refuses to back up from a connection that writes."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        source, target = sqlite3.connect(f"file:{sqlite_file}?mode=ro", uri=True), sqlite3.connect(tmp)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except (OSError, sqlite3.Error) as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise StoreError(f"cannot copy the catalog aside to {dest} before upgrading it ({exc}); nothing was "
                         f"changed") from exc


def _run_alembic(conn: Connection, stamp: str | None) -> None:
    from alembic import command
    from alembic.config import Config
    from alembic.util import CommandError

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    try:
        if stamp is not None:
            command.stamp(cfg, stamp)
        command.upgrade(cfg, HEAD)
    except CommandError as exc:
        raise StoreError(f"cannot upgrade the catalog: {exc}") from exc
