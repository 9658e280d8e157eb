"""The catalog's tables and the rows as simsearch passes them around; creating them, once, and the
schema version a catalog must have.

Paths are stored through `_Path`: compared byte-wise, and valid Unicode whatever the file name's bytes
(simsearch.paths).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from ..errors import StoreError
from ..paths import from_catalog, to_catalog


SCHEMA_VERSION = 1


OK, FAILED = "ok", "failed"


_Id = BigInteger().with_variant(Integer, "sqlite")  # SQLite AUTOINCREMENT needs exactly INTEGER


class _Path(TypeDecorator[str]):
    """A file path: compared byte-wise, and stored as valid Unicode whatever its bytes (simsearch.paths).
    Statements sent through the driver itself encode with to_catalog / from_catalog as this does.

    Byte-wise everywhere: folder-prefix ranges must not follow a linguistic collation (glibc's en_US
    ignores punctuation such as "/", ICU's en-US puts "/p/A/" inside "/p/a/"; tested on PostgreSQL)."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        return dialect.type_descriptor(Text(collation="C") if dialect.name == "postgresql" else Text())

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else to_catalog(value)

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else from_catalog(value)


_PG_CREATE_LOCK = 0x51D5EA  # pg_advisory_xact_lock key: two processes creating one catalog take turns


class Base(DeclarativeBase):
    pass


class ImageRecord(Base):
    __tablename__ = "images"
    # AUTOINCREMENT: ids are never reused, so an id in an old FAISS file can never name another photo.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(_Path, unique=True)
    size: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(16))
    taken_at: Mapped[datetime | None] = mapped_column(DateTime)
    indexed_at: Mapped[datetime] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(8), index=True)
    error: Mapped[str | None] = mapped_column(Text)


class VectorRecord(Base):
    __tablename__ = "vectors"

    image_id: Mapped[int] = mapped_column(_Id, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class FingerprintRecord(Base):
    """A photo's duplicate fingerprint (simsearch.verify), by content: copies and moves share it."""

    __tablename__ = "fingerprints"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    phash: Mapped[bytes] = mapped_column(LargeBinary)  # the four rotations' pHashes: read alone to find candidates
    data: Mapped[bytes] = mapped_column(LargeBinary)


class MetaRecord(Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


_IMAGES, _VECTORS, _FINGERPRINTS = ImageRecord.__table__, VectorRecord.__table__, FingerprintRecord.__table__


_IMAGE_COLUMNS = tuple(c.name for c in _IMAGES.columns)  # id first: COPY writes every column the table has


@dataclass(frozen=True)
class Entry:
    """What the indexer needs to know of a catalogued file to decide whether to touch it."""

    id: int
    path: str
    size: int | None
    mtime_ns: int | None
    sha256: str | None
    status: str


@dataclass(frozen=True)
class ImageFields:
    """A row as the indexer writes it; vector is None exactly when status is failed."""

    path: str
    size: int | None
    mtime_ns: int | None
    sha256: str | None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    taken_at: datetime | None = None
    error: str | None = None


def create_schema(engine: Engine) -> None:
    """Tables and the first meta rows, once. Two processes making the same new store at the same moment
    (SQLite has no lock for CREATE TABLE IF NOT EXISTS across connections): the loser retries and finds
    what the winner made."""
    for attempt in range(8):
        try:
            return _create_once(engine)
        except (OperationalError, IntegrityError) as exc:
            text = str(exc)
            # SQLite's deferred transactions may be refused a write lock at once (no busy wait) after a
            # concurrent writer committed: "database is locked"; retrying reads what that writer made
            if attempt == 7 or not any(m in text for m in ("already exists", "UNIQUE", "duplicate key", "locked")):
                raise
            time.sleep(0.05 * (attempt + 1))


def _create_once(engine: Engine) -> None:
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_CREATE_LOCK})
        Base.metadata.create_all(conn)
        value = conn.scalar(select(MetaRecord.value).where(MetaRecord.key == "schema_version"))
        if value is None:
            conn.execute(insert(MetaRecord), [{"key": "schema_version", "value": json.dumps(SCHEMA_VERSION)},
                                              {"key": "vectors_version", "value": "0"}])
    found = None if value is None else json.loads(value)
    if found is not None and found != SCHEMA_VERSION:
        raise StoreError(f"catalog schema version {found} is not supported (this simsearch reads {SCHEMA_VERSION})")
