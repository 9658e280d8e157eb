"""The database under a catalog: engines (SQLite tuned, a read-only one for a full disk), the files that
must not be taken for a new catalog, errors translated to StoreError, and lookups by key through the
driver on the hot paths.
"""

from __future__ import annotations

import functools
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from ..errors import StoreError
from ..paths import to_catalog
from .schema import _Path


F = TypeVar("F", bound=Callable[..., Any])


def _db_errors(fn: F) -> F:
    """Database failures surface as StoreError, with the original chained."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (SQLAlchemyError, sqlite3.Error) as exc:  # sqlite3's own: lookups through its cursor (_rows_in)
            full = _full_disk(args[0].engine) if args and isinstance(args[0], Database) else None
            if full is not None:
                raise StoreError(f"no space left on the disk of {full} while writing the catalog; nothing "
                                 f"committed is lost (free some space, then run again)") from exc
            orig = getattr(exc, "orig", None) or exc  # the driver's own error says it best, without the SQL
            raise StoreError(f"catalog database error: {orig.__class__.__name__}: {str(orig).strip()}") from exc

    return wrapper  # type: ignore[return-value]


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


FULL_BELOW = 1 << 20  # bytes free under which a failing SQLite write is taken for a full disk


def _sqlite_file(engine: Engine) -> str | None:
    """The catalog's file, for SQLite on disk (a read_only_engine's URI form too)."""
    name = engine.url.database if engine.dialect.name == "sqlite" else None
    if not name or name == ":memory:":
        return None
    return name[len("file:"):].split("?", 1)[0] if name.startswith("file:") else name


def _full_disk(engine: Engine) -> str | None:
    """The SQLite catalog file, if the disk it is on is (nearly) full: SQLite says only "disk I/O error"
    or "database or disk is full", and either may hide ENOSPC."""
    name = _sqlite_file(engine)
    if name is None:
        return None
    try:
        return name if shutil.disk_usage(os.path.dirname(os.path.abspath(name))).free < FULL_BELOW else None
    except OSError:
        return None


def read_only_engine(path: str) -> Engine:
    """The catalog file opened read-only and immutable: SQLite then needs no -shm or -wal file, so reads
    work on a full disk (the WAL's own files cannot be created there). Only for a file whose WAL is empty."""
    return create_engine(f"sqlite:///file:{path}?mode=ro&immutable=1&uri=true")


def make_engine(url: str) -> Engine:
    """SQLite gets WAL, full fsync on commit and a busy timeout; in-memory SQLite one shared connection."""
    if url in ("sqlite://", "sqlite:///:memory:"):
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        engine = create_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            tune_sqlite(dbapi_conn, wal=url not in ("sqlite://", "sqlite:///:memory:"))

    return engine


def tune_sqlite(dbapi_conn: sqlite3.Connection, *, wal: bool = True, foreign_keys: bool = True) -> None:
    """Every connection to a catalog file: a busy timeout (first: switching to WAL may have to wait too),
    WAL, full fsync on commit, and foreign keys unless a migration is about to rebuild tables."""
    dbapi_conn.execute("PRAGMA busy_timeout=30000")
    if wal:
        use_wal(dbapi_conn)
    dbapi_conn.execute("PRAGMA synchronous=FULL")
    if foreign_keys:
        dbapi_conn.execute("PRAGMA foreign_keys=ON")


def use_wal(dbapi_conn: sqlite3.Connection) -> None:
    """Switch a SQLite file to WAL. A new file is still in rollback mode while another connection makes
    the schema in it, and the switch is then refused at once ("database is locked", no busy wait): it is
    tried again until that transaction ends (as long as busy_timeout would wait)."""
    for attempt in range(300):
        try:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 299:
                raise
            time.sleep(0.1)


SQLITE_HEADER = b"SQLite format 3\0"


def _refuse_a_file_that_is_not_sqlite(engine: Engine, empty_ok: bool) -> None:
    """SQLite takes an empty file for a new database and would make a new, empty store of a catalog that
    was truncated or overwritten; such a file is an error to look into, never a fresh start. empty_ok: a
    0-byte file may be one that another process is creating this very moment (SQLite makes the file
    before it writes to it), so a new store allows it."""
    name = engine.url.database if engine.dialect.name == "sqlite" else None
    if not name or name == ":memory:" or not os.path.isfile(name):
        return
    try:
        with open(name, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise StoreError(f"cannot read catalog {name}: {exc.strerror or exc}") from exc
    if head != SQLITE_HEADER and not (empty_ok and not head):
        what = "is empty (0 bytes)" if not head else "is not a SQLite database"
        raise StoreError(f"catalog {name} {what}: it is not a catalog simsearch wrote. If the store is new, delete "
                         f"the file and index again; otherwise restore it from a backup")


def _chunks(items: list[Any], size: int = 500) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _rows_in(conn: Any, table: Any, key: str, values: list[Any], *columns: str) -> Iterator[Any]:
    """(key, *columns) of the rows whose key is among values. Through the driver on SQLite (an IN of ?) and
    psycopg (one array parameter): compiling an IN of hundreds of parameters cost SQLAlchemy more than
    running it, on the bulk writes' and re-scoring's hot paths."""
    what = f"SELECT {', '.join((key, *columns))} FROM {table.name} WHERE {key}"
    if conn.dialect.name == "sqlite" or (conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg"):
        # the driver's own statements: a path key is encoded as the column type would, and decoded back
        stored = {to_catalog(v): v for v in values} if isinstance(table.c[key].type, _Path) else None
        for row in _driver_rows_in(conn, what, list(stored) if stored is not None else values):
            yield row if stored is None else (stored[row[0]], *row[1:])
        return
    for part in _chunks(values):
        yield from conn.execute(select(table.c[key], *(table.c[c] for c in columns)).where(table.c[key].in_(part)))


def _driver_rows_in(conn: Any, what: str, values: list[Any]) -> Iterator[Any]:
    if conn.dialect.name == "postgresql":
        yield from conn.exec_driver_sql(f"{what} = ANY(%(values)s)", {"values": values})
        return
    for part in _chunks(values):  # sqlite3's own cursor, in the same transaction: plain tuples, no
        # SQLAlchemy rows (480 vectors of a 1M-row catalog: 2.8 ms, through SQLAlchemy's result 3.5 ms)
        cursor = conn.connection.driver_connection.cursor()  # its errors: sqlite3's, see _db_errors
        try:
            yield from cursor.execute(f"{what} IN ({', '.join('?' * len(part))})", part)
        finally:
            cursor.close()


class Database:
    """An engine and the sessions on it: what every part of the catalog works through."""

    engine: Engine
    url: str
    read_only: bool = False

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    def close(self) -> None:
        self.engine.dispose()
