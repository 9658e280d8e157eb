"""The catalog: one row per image file, its vector, and the store's provenance, in any SQL database.

The catalog is the source of truth. Vectors live here too, so the FAISS file is a cache that can
always be rebuilt; `vectors_version` is bumped in every transaction that changes a vector and is
saved beside the FAISS file, so a stale index file is detected even when its ids look right.
"""

from __future__ import annotations

import os

from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from ..errors import NotFoundError, StoreError
from .engine import (
    FULL_BELOW,
    SQLITE_HEADER,
    Database,
    _db_errors,
    _full_disk,
    _sqlite_file,
    _refuse_a_file_that_is_not_sqlite,
    make_engine,
    read_only_engine,
)
from .meta import Meta
from .migrate import migrate
from .reads import BrowseKey, ImageFilter, Reads, parse_when
from .schema import (
    FAILED,
    OK,
    SCHEMA_VERSION,
    Base,
    Entry,
    FingerprintRecord,
    ImageFields,
    ImageRecord,
    MetaRecord,
    VectorRecord,
)
from .writes import Changes, Writes, Written


__all__ = ["Catalog", "Changes", "Written", "Entry", "ImageFields", "ImageFilter", "BrowseKey", "parse_when",
           "OK", "FAILED", "SCHEMA_VERSION", "Base", "ImageRecord", "VectorRecord", "FingerprintRecord",
           "MetaRecord", "make_engine", "read_only_engine", "Database", "Meta", "Reads", "Writes", "FULL_BELOW",
           "SQLITE_HEADER"]


class Catalog(Writes, Reads):
    """Rows, vectors and provenance. Every public method is one transaction, except the iterators
    (iter_vectors), which read one transaction per chunk so that writers are never held up. The jobs
    live apart: the schema (schema.py), the database and its errors (engine.py), meta rows (meta.py),
    making and upgrading it (migrate.py), reads and filters (reads.py), writes (writes.py)."""

    def __init__(self, db: str | Engine, *, new: bool = True) -> None:
        """new: the catalog may be a new one (an empty file is then one being made, not one truncated)."""
        self.engine = make_engine(db) if isinstance(db, str) else db
        self.url = self.engine.url.render_as_string(hide_password=True)
        _refuse_a_file_that_is_not_sqlite(self.engine, empty_ok=new)
        self.read_only = False
        try:
            self._create()
        except StoreError:
            name = _full_disk(self.engine)
            wal = f"{name}-wal"
            if name is None or (os.path.exists(wal) and os.path.getsize(wal) > 0):
                raise  # not a full disk, or commits still in the WAL that an immutable reader would miss
            self.engine.dispose()
            self.engine, self.read_only = read_only_engine(name), True  # reads go on; writes say the disk is full
            self._create()

    @staticmethod
    @_db_errors
    def require(db: str | Engine) -> None:
        """NotFoundError unless db already holds a catalog; creates nothing (not even a SQLite file): a
        mistyped --db must not become a new, empty catalog."""
        engine = make_engine(db) if isinstance(db, str) else db
        name = engine.url.render_as_string(hide_password=True)
        try:
            file = _sqlite_file(engine)
            if file is not None and not os.path.isfile(file):
                raise NotFoundError(f"no catalog at {name}: the file does not exist (`simsearch index FOLDER "
                                    f"--db URL` makes one)")
            if file is not None or engine.dialect.name != "sqlite":  # an in-memory SQLite is always new
                with engine.connect() as conn:
                    if not inspect(conn).has_table("meta"):
                        raise NotFoundError(f"no catalog in {name}: the database holds no simsearch tables "
                                            f"(`simsearch index FOLDER --db URL` makes them)")
        finally:
            if isinstance(db, str):
                engine.dispose()

    @_db_errors
    def _create(self) -> None:
        migrate(self.engine, _sqlite_file(self.engine), self.read_only)
