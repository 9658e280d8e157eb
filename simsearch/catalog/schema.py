"""The catalog's tables and the rows as simsearch passes them around, at the schema version this simsearch
reads (making and upgrading catalogs to it: simsearch.catalog.migrate).

Paths are stored through `_Path`: compared byte-wise, and valid Unicode whatever the file name's bytes
(simsearch.paths).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    REAL,
    SmallInteger,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from ..paths import from_catalog, to_catalog


SCHEMA_VERSION = 3  # the last revision of migrations/versions; 2: images.decoded_from; 3: labels


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
    decoded_from: Mapped[str | None] = mapped_column(String(16))  # DECODED_FROM; NULL: indexed before schema 2


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


class LabelRecord(Base):
    """One of a photo's ImageNet classes (simsearch.labels), by content like fingerprints: copies and moves
    share them. Ranked by class: the index on (label, probability) answers a query by label."""

    __tablename__ = "labels"
    __table_args__ = (Index("ix_labels_label_probability", "label", "probability"),)

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[int] = mapped_column(SmallInteger, primary_key=True)  # 0..999, the table's order
    probability: Mapped[float] = mapped_column(REAL)


class MetaRecord(Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


_IMAGES, _VECTORS, _FINGERPRINTS = ImageRecord.__table__, VectorRecord.__table__, FingerprintRecord.__table__
_LABELS = LabelRecord.__table__


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
    decoded_from: str | None = None  # which picture fed the model: simsearch.images.DECODED_FROM
