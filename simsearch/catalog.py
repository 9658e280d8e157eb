"""The catalog: one row per image file, its vector, and the store's provenance, in any SQL database.

The catalog is the source of truth. Vectors live here too, so the FAISS file is a cache that can
always be rebuilt; `vectors_version` is bumped in every transaction that changes a vector and is
saved beside the FAISS file, so a stale index file is detected even when its ids look right.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    bindparam,
    cast,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.types import TypeDecorator
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

from .errors import StoreError
from .paths import from_catalog, to_catalog
from .verify import phashes

SCHEMA_VERSION = 1
OK, FAILED = "ok", "failed"

_Id = BigInteger().with_variant(Integer, "sqlite")  # SQLite AUTOINCREMENT needs exactly INTEGER
# Paths compare byte-wise everywhere: folder-prefix ranges must not follow a linguistic collation (glibc's
# en_US ignores punctuation such as "/", ICU's en-US puts "/p/A/" inside "/p/a/"; tested on PostgreSQL).
class _Path(TypeDecorator[str]):
    """A file path: compared byte-wise, and stored as valid Unicode whatever its bytes (simsearch.paths).
    Statements sent through the driver itself encode with to_catalog / from_catalog as this does."""

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


@dataclass
class Changes:
    """One batch of indexing, written in one transaction."""

    upserts: list[tuple[ImageFields, np.ndarray | None]] = field(default_factory=list)
    moves: list[tuple[int, str, int, int]] = field(default_factory=list)  # id, new path, size, mtime_ns
    touches: list[tuple[int, int, int]] = field(default_factory=list)  # id, size, mtime_ns
    deletes: list[int] = field(default_factory=list)
    fingerprints: dict[str, bytes] = field(default_factory=dict)  # sha256 -> fingerprint of new content

    def __len__(self) -> int:
        return len(self.upserts) + len(self.moves) + len(self.touches) + len(self.deletes)


@dataclass(frozen=True)
class Written:
    """What a write did to vectors, so the caller can mirror it in FAISS."""

    added_ids: np.ndarray  # ids whose (new) vector is in added_vectors
    added_vectors: np.ndarray
    removed_ids: np.ndarray  # ids whose old vector must leave the index first
    version: int


@dataclass(frozen=True)
class ImageFilter:
    """Which indexed photos a query may return; every condition given must hold."""

    folder: str | None = None  # absolute path: the photo is under it
    # EXIF date taken, both ends inclusive; a date (not a datetime) means the whole day, so until 2018-12-31
    # keeps a photo taken that evening. Photos without a date taken never match a date.
    taken_from: date | None = None
    taken_until: date | None = None
    formats: tuple[str, ...] = ()  # Pillow format names, any case: JPEG, PNG, WEBP, ...
    min_pixels: int | None = None  # width * height

    def __bool__(self) -> bool:
        return any(v not in (None, ()) for v in (self.folder, self.taken_from, self.taken_until, self.formats,
                                                  self.min_pixels))


@dataclass(frozen=True)
class BrowseKey:
    """Where a page of browsing ended: the last photo's date taken (None: among the undated), file time, id."""

    taken_at: datetime | None
    mtime_ns: int
    id: int

    @classmethod
    def of(cls, row: dict[str, Any]) -> BrowseKey:
        taken = row["taken_at"]
        return cls(datetime.fromisoformat(taken) if taken else None, int(row["mtime_ns"] or 0), int(row["id"]))

    def before(self) -> Any:
        """Rows after this one in browsing order (newest first), spelled out: row-value comparisons would
        bypass the columns' types, which SQLite needs to compare dates as it stores them."""
        m, i = ImageRecord.mtime_ns, ImageRecord.id
        later = (m < self.mtime_ns) | ((m == self.mtime_ns) & (i < self.id))
        if self.taken_at is None:
            return later
        t = ImageRecord.taken_at
        return (t < self.taken_at) | ((t == self.taken_at) & later)


def _filter_conditions(f: ImageFilter) -> list[Any]:
    conds = [ImageRecord.status == OK]
    if f.folder:
        conds.append(_prefix_filter(f.folder))
    midnight = datetime.min.time()
    if f.taken_from:
        start = f.taken_from
        conds.append(ImageRecord.taken_at >= (start if isinstance(start, datetime) else datetime.combine(start, midnight)))
    if f.taken_until:
        end = f.taken_until
        if isinstance(end, datetime):
            conds.append(ImageRecord.taken_at <= end)
        elif end < date.max:  # the whole day
            conds.append(ImageRecord.taken_at < datetime.combine(end + timedelta(days=1), midnight))
        else:  # the last day there is: every dated photo
            conds.append(ImageRecord.taken_at.is_not(None))
    if f.formats:
        conds.append(func.upper(ImageRecord.format).in_([x.upper() for x in f.formats]))
    if f.min_pixels:
        conds.append(cast(ImageRecord.width, BigInteger) * ImageRecord.height >= f.min_pixels)
    return conds


def parse_when(text: str) -> date:
    """A filter's date as people write it: YYYY-MM-DD is a whole day (a date); with a time, that moment."""
    try:
        text = text.strip()
        return date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"not a date: {text!r} (expected YYYY-MM-DD, or YYYY-MM-DDTHH:MM[:SS])") from exc


F = TypeVar("F", bound=Callable[..., Any])


def _db_errors(fn: F) -> F:
    """Database failures surface as StoreError, with the original chained."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (SQLAlchemyError, sqlite3.Error) as exc:  # sqlite3's own: lookups through its cursor (_rows_in)
            full = _full_disk(args[0].engine) if args and isinstance(args[0], Catalog) else None
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
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=30000")  # first: switching to WAL below may have to wait too
            if url not in ("sqlite://", "sqlite:///:memory:"):
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return engine


def _prefix_filter(prefix: str) -> Any:
    folder = prefix.rstrip(os.sep) + os.sep
    # LIKE with escaping would be dialect-dependent; a range on the sorted text is exact and uses the index.
    return (ImageRecord.path >= folder) & (ImageRecord.path < folder[:-1] + chr(ord(os.sep) + 1))


def _row_dict(r: ImageRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "path": r.path,
        "size": r.size,
        "mtime": None if r.mtime_ns is None else r.mtime_ns / 1e9,
        "mtime_ns": r.mtime_ns,
        "sha256": r.sha256,
        "width": r.width,
        "height": r.height,
        "format": r.format,
        "taken_at": r.taken_at.isoformat() if r.taken_at else None,
        "indexed_at": r.indexed_at.isoformat() + "Z" if r.indexed_at else None,
        "status": r.status,
        "error": r.error,
    }


_IMAGES, _VECTORS, _FINGERPRINTS = ImageRecord.__table__, VectorRecord.__table__, FingerprintRecord.__table__


def _chunks(items: list[Any], size: int = 500) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _put_fingerprints(conn: Any, fingerprints: dict[str, bytes]) -> None:
    """Store fingerprints by content, replacing any of another version."""
    for part in _chunks(list(fingerprints)):
        conn.execute(delete(_FINGERPRINTS).where(_FINGERPRINTS.c.sha256.in_(part)))
    conn.execute(insert(_FINGERPRINTS), [{"sha256": sha, "phash": phashes(data), "data": data}
                                         for sha, data in fingerprints.items()])


def _drop_unused_fingerprints(conn: Any, hashes: set[str]) -> None:
    """Fingerprints of these contents that no row has any more (a file deleted or changed) leave too."""
    for part in _chunks(sorted(hashes)):
        used = select(_IMAGES.c.sha256).where(_IMAGES.c.sha256.in_(part))
        conn.execute(delete(_FINGERPRINTS).where(_FINGERPRINTS.c.sha256.in_(part), _FINGERPRINTS.c.sha256.not_in(used)))


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


def _write_upserts(conn: Any, upserts: list[tuple[ImageFields, np.ndarray | None]],
                   now: datetime) -> tuple[list[int], list[np.ndarray], list[int], set[str]]:
    """Rows by path, inserted or updated in bulk, with their vectors: (added ids, their vectors, ids whose
    old vector must leave the index, the contents updated rows had). A path given twice in one batch keeps
    its last facts."""
    last = {facts.path: (facts, vec) for facts, vec in upserts}
    if not last:
        return [], [], [], set()
    paths = list(last)
    existing: dict[str, int] = {}
    was: set[str] = set()
    had: set[int] = set()
    for path, i, sha in _rows_in(conn, _IMAGES, "path", paths, "id", "sha256"):
        existing[path] = i
        if sha:
            was.add(sha)
    had.update(i for (i,) in _rows_in(conn, _VECTORS, "image_id", list(existing.values())))

    def values(facts: ImageFields, vec: np.ndarray | None) -> dict[str, Any]:
        return {"size": facts.size, "mtime_ns": facts.mtime_ns, "sha256": facts.sha256, "width": facts.width,
                "height": facts.height, "format": facts.format, "taken_at": facts.taken_at, "indexed_at": now,
                "status": OK if vec is not None else FAILED, "error": None if vec is not None else facts.error}

    old = [p for p in paths if p in existing]
    if old:
        conn.execute(update(_IMAGES).where(_IMAGES.c.id == bindparam("b_id")),
                     [values(*last[p]) | {"b_id": existing[p]} for p in old])
        removed = [existing[p] for p in old if existing[p] in had]
        for part in _chunks(removed):
            conn.execute(delete(_VECTORS).where(_VECTORS.c.image_id.in_(part)))
    else:
        removed = []
    new = [p for p in paths if p not in existing]
    copy = conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg"
    if new and copy:
        existing.update(_pg_copy_images(conn, [values(*last[p]) | {"path": p} for p in new]))
    elif new:  # one executemany, ids read back by path: SQLite's INSERT ... RETURNING in order goes row by row
        _insert_many(conn, _IMAGES, [values(*last[p]) | {"path": p} for p in new])
        existing.update(_rows_in(conn, _IMAGES, "path", new, "id"))
    added = [(existing[p], np.asarray(last[p][1], np.float32)) for p in paths if last[p][1] is not None]
    if added and copy:
        _pg_copy_vectors(conn, added)
    elif added:
        _insert_many(conn, _VECTORS, [{"image_id": i, "data": v.tobytes()} for i, v in added])
    return [i for i, _ in added], [v for _, v in added], removed, was


_SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's own storage format for DateTime on SQLite


def _insert_many(conn: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    """INSERT of many rows. On SQLite straight through the driver's executemany: SQLAlchemy's per-value
    processing cost a third of a batch's time there; datetimes are written in the format it reads back."""
    if conn.dialect.name != "sqlite":
        conn.execute(insert(table), rows)
        return
    columns = list(rows[0])
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    by_column = list(zip(*(r.values() for r in rows)))  # column-wise: a batch shares its indexed_at
    for i, name in enumerate(columns):
        if isinstance(table.c[name].type, _Path):
            by_column[i] = tuple(None if v is None else to_catalog(v) for v in by_column[i])
        elif isinstance(table.c[name].type, DateTime):
            text: dict[datetime, str] = {}
            by_column[i] = tuple(None if v is None else text.get(v) or text.setdefault(v, v.strftime(_SQLITE_DATETIME))
                                 for v in by_column[i])
    conn.exec_driver_sql(sql, list(zip(*by_column)))


_IMAGE_COLUMNS = tuple(c.name for c in _IMAGES.columns)  # id first: COPY writes every column the table has


def _pg_copy_images(conn: Any, rows: list[dict[str, Any]]) -> dict[str, int]:
    """New rows through COPY, in this transaction: ids are drawn from the table's sequence first (ascending,
    in the rows' order, as INSERT would give them), so no row needs RETURNING. path -> id."""
    with conn.connection.dbapi_connection.cursor() as cur:
        cur.execute("SELECT nextval(pg_get_serial_sequence('images', 'id')) FROM generate_series(1, %s)", (len(rows),))
        ids = sorted(r[0] for r in cur.fetchall())
        with cur.copy(f"COPY images ({', '.join(_IMAGE_COLUMNS)}) FROM STDIN") as copy:
            for i, row in zip(ids, rows):
                copy.write_row((i, *(to_catalog(row[c]) if c == "path" else row[c] for c in _IMAGE_COLUMNS[1:])))
    return {row["path"]: i for i, row in zip(ids, rows)}


def _pg_copy_vectors(conn: Any, added: list[tuple[int, np.ndarray]]) -> None:
    """Vectors through binary COPY: 4 KB of float32 each, sent as raw bytes."""
    with conn.connection.dbapi_connection.cursor() as cur:
        with cur.copy("COPY vectors (image_id, data) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "bytea"])
            for i, v in added:
                copy.write_row((i, v.tobytes()))


_ENTRY = (ImageRecord.id, ImageRecord.path, ImageRecord.size, ImageRecord.mtime_ns, ImageRecord.sha256,
          ImageRecord.status)  # the columns of an Entry, in its field order


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


class Catalog:
    """Rows, vectors and provenance. Every public method is one transaction, except the iterators
    (iter_vectors), which read one transaction per chunk so that writers are never held up."""

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

    @_db_errors
    def _create(self) -> None:
        """Tables and the first meta rows, once. Two processes making the same new store at the same moment
        (SQLite has no lock for CREATE TABLE IF NOT EXISTS across connections): the loser retries and finds
        what the winner made."""
        for attempt in range(8):
            try:
                return self._create_once()
            except (OperationalError, IntegrityError) as exc:
                text = str(exc)
                # SQLite's deferred transactions may be refused a write lock at once (no busy wait) after a
                # concurrent writer committed: "database is locked"; retrying reads what that writer made
                if attempt == 7 or not any(m in text for m in ("already exists", "UNIQUE", "duplicate key", "locked")):
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _create_once(self) -> None:
        with self.engine.begin() as conn:
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

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    def close(self) -> None:
        self.engine.dispose()

    # provenance -----------------------------------------------------------------------------
    @_db_errors
    def get_meta(self, key: str) -> Any:
        with self._session() as s:
            row = s.get(MetaRecord, key)
            return None if row is None else json.loads(row.value)

    @_db_errors
    def set_meta(self, **values: Any) -> None:
        with self._session() as s:
            self._take_turn(s)  # two writers adding the same new key must not both insert it
            for key, value in values.items():
                s.merge(MetaRecord(key=key, value=json.dumps(value)))

    @staticmethod
    def _take_turn(s: Session) -> MetaRecord:
        """Lock the version row first thing: writers take turns, and what each then reads is current.

        A row lock on PostgreSQL. SQLite ignores FOR UPDATE and its driver starts a transaction only at the
        first write, so a writer's reads could predate another's commit (two stores recording their model
        into one new catalog collided on the meta key): a no-op write takes the database's write lock first."""
        version = MetaRecord.key == "vectors_version"
        if s.get_bind().dialect.name == "sqlite":
            s.connection().exec_driver_sql(f"UPDATE {MetaRecord.__tablename__} SET value = value "
                                           f"WHERE key = 'vectors_version'")
        return s.scalars(select(MetaRecord).where(version).with_for_update()).one()

    # reading ----------------------------------------------------------------------------------
    def entries_under(self, folder: str, chunk: int = 1000) -> Iterator[Entry]:
        """The rows under a folder in path order (the order of formats.walk_images), read a chunk at a time
        by keyset on the path index, one transaction per chunk: a scan merges them with the listing, so
        neither is held whole, whatever the folder's size."""
        after: str | None = None
        while True:
            rows = self._entries_after(folder, after, chunk)
            yield from rows
            if len(rows) < chunk:
                return
            after = rows[-1].path

    @_db_errors
    def _entries_after(self, folder: str, after: str | None, limit: int) -> list[Entry]:
        conds = [_prefix_filter(folder)] + ([ImageRecord.path > after] if after is not None else [])
        with self._session() as s:
            return [Entry(*r) for r in s.execute(select(*_ENTRY).where(*conds).order_by(ImageRecord.path).limit(limit))]

    @_db_errors
    def ok_hashes(self) -> dict[str, int]:
        """sha256 -> id of one indexed image with that content (to reuse vectors of copies and moves)."""
        with self._session() as s:
            rows = s.execute(select(ImageRecord.sha256, func.min(ImageRecord.id))
                             .where(ImageRecord.status == OK).group_by(ImageRecord.sha256))
            return {sha: i for sha, i in rows if sha}

    @_db_errors
    def ids_for_paths(self, paths: Iterable[str]) -> list[int]:
        """Exact files, and everything under any path that is a folder."""
        conds = []
        for p in paths:
            conds.append(ImageRecord.path == p)
            conds.append(_prefix_filter(p))
        if not conds:
            return []
        with self._session() as s:
            return list(s.scalars(select(ImageRecord.id).where(or_(*conds))))

    @_db_errors
    def entry_for_path(self, path: str) -> Entry | None:
        with self._session() as s:
            r = s.execute(select(*_ENTRY).where(ImageRecord.path == path)).first()
            return None if r is None else Entry(*r)

    @_db_errors
    def same_content(self) -> list[list[int]]:
        """Groups of indexed ids whose files have identical bytes (sha256)."""
        with self._session() as s:
            shas = s.scalars(select(ImageRecord.sha256).where(ImageRecord.status == OK, ImageRecord.sha256.is_not(None))
                             .group_by(ImageRecord.sha256).having(func.count() > 1))
            groups: dict[str, list[int]] = {sha: [] for sha in shas}
            if groups:
                rows = s.execute(select(ImageRecord.sha256, ImageRecord.id)
                                 .where(ImageRecord.status == OK, ImageRecord.sha256.in_(list(groups))))
                for sha, i in rows:
                    groups[sha].append(i)
        return [sorted(g) for g in groups.values()]

    @_db_errors
    def ids_matching(self, f: ImageFilter) -> np.ndarray:
        """Ids of indexed photos that pass the filter: the pre-filter handed to the vector search."""
        with self._session() as s:
            return np.fromiter(s.scalars(select(ImageRecord.id).where(*_filter_conditions(f))), dtype=np.int64)

    @_db_errors
    def browse(self, f: ImageFilter, after: BrowseKey | None = None,
               limit: int = 60) -> tuple[list[dict[str, Any]], int | None]:
        """A page of indexed photos passing the filter, newest first: by date taken, then the undated ones
        by file time (ties by id), resumed after the key of the last photo of the previous page; and how
        many pass the filter in all, counted for the first page only (None after it: a count is a scan)."""
        conds = _filter_conditions(f)
        dated = ImageRecord.taken_at.is_not(None)
        out: list[ImageRecord] = []
        with self._session() as s:
            total = None if after else s.scalar(select(func.count()).select_from(ImageRecord).where(*conds)) or 0
            if after is None or after.taken_at is not None:
                q = select(ImageRecord).where(*conds, dated, *([after.before()] if after else []))
                out += s.scalars(q.order_by(ImageRecord.taken_at.desc(), ImageRecord.mtime_ns.desc(),
                                             ImageRecord.id.desc()).limit(limit))
            if len(out) < limit:
                undated = after if after is not None and after.taken_at is None else None
                q = select(ImageRecord).where(*conds, ImageRecord.taken_at.is_(None),
                                              *([undated.before()] if undated else []))
                out += s.scalars(q.order_by(ImageRecord.mtime_ns.desc(), ImageRecord.id.desc()).limit(limit - len(out)))
        return [_row_dict(r) for r in out], total

    @_db_errors
    def records(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        ids = [int(i) for i in ids]
        out: dict[int, dict[str, Any]] = {}
        with self._session() as s:
            for start in range(0, len(ids), 500):
                for r in s.scalars(select(ImageRecord).where(ImageRecord.id.in_(ids[start : start + 500]))):
                    out[r.id] = _row_dict(r)
        return out

    @_db_errors
    def vector(self, image_id: int, dim: int) -> np.ndarray | None:
        with self._session() as s:
            data = s.scalar(select(VectorRecord.data).where(VectorRecord.image_id == image_id))
        return None if data is None else np.frombuffer(data, np.float32).reshape(dim)

    @_db_errors
    def vectors_for(self, ids: np.ndarray, dim: int) -> np.ndarray:
        """Vectors of these ids, in their order (ids must hold vectors)."""
        ids = [int(i) for i in ids]
        with self._session() as s:
            rows: dict[int, bytes] = dict(_rows_in(s.connection(), _VECTORS, "image_id", ids, "data"))
        return np.frombuffer(b"".join(rows[i] for i in ids), np.float32).reshape(len(ids), dim)

    @_db_errors
    def vector_ids(self) -> np.ndarray:
        with self._session() as s:
            return np.fromiter(s.scalars(select(VectorRecord.image_id)), dtype=np.int64)

    @_db_errors
    def iter_vectors(self, dim: int, chunk: int = 8192) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) in chunks by id, for rebuilding the index in bounded memory."""
        last = -1
        while True:
            with self._session() as s:
                rows = s.execute(
                    select(VectorRecord.image_id, VectorRecord.data)
                    .where(VectorRecord.image_id > last).order_by(VectorRecord.image_id).limit(chunk)
                ).all()
            if not rows:
                return
            ids = np.array([r[0] for r in rows], np.int64)
            vecs = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), dim)
            yield ids, vecs
            last = int(ids[-1])

    @_db_errors
    def counts(self) -> dict[str, Any]:
        """Indexed and failed files, and when the last one was written."""
        with self._session() as s:
            by_status = dict(s.execute(select(ImageRecord.status, func.count()).group_by(ImageRecord.status)).all())
            last = s.scalar(select(func.max(ImageRecord.indexed_at)))
        return {"images": by_status.get(OK, 0), "failed": by_status.get(FAILED, 0),
                "last_indexed_at": last.isoformat() + "Z" if last else None}

    @_db_errors
    def failures(self) -> list[dict[str, Any]]:
        with self._session() as s:
            rows = s.scalars(select(ImageRecord).where(ImageRecord.status == FAILED).order_by(ImageRecord.path))
            return [_row_dict(r) for r in rows]

    @_db_errors
    def fingerprints(self, hashes: Iterable[str]) -> dict[str, bytes]:
        """Stored duplicate fingerprints of these contents (those missing are left out)."""
        hashes = sorted(set(hashes))
        out: dict[str, bytes] = {}
        with self._session() as s:
            for start in range(0, len(hashes), 500):
                out.update(s.execute(select(FingerprintRecord.sha256, FingerprintRecord.data)
                                     .where(FingerprintRecord.sha256.in_(hashes[start : start + 500]))).all())
        return out

    @_db_errors
    def perceptual_hashes(self) -> tuple[list[str], np.ndarray]:
        """Every indexed content's hash and its four rotations' pHashes, uint8 [n, 4, 8] (32 bytes each)."""
        with self._session() as s:
            rows = s.execute(select(FingerprintRecord.sha256, FingerprintRecord.phash)
                             .where(FingerprintRecord.sha256.in_(select(ImageRecord.sha256)
                                                                  .where(ImageRecord.status == OK)))).all()
        return [r[0] for r in rows], np.frombuffer(b"".join(r[1] for r in rows), np.uint8).reshape(len(rows), 4, 8)

    @_db_errors
    def integrity(self) -> list[str]:
        """What the database's own check finds wrong (SQLite's integrity_check; PostgreSQL checks its pages
        as it reads them, so nothing is asked of it here)."""
        if self.engine.dialect.name != "sqlite":
            return []
        with self.engine.connect() as conn:
            found = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA integrity_check(20)")]
        return [] if found == ["ok"] else found

    @_db_errors
    def iter_fingerprints(self, chunk: int = 2000) -> Iterator[tuple[str, bytes]]:
        """(content hash, fingerprint) of every stored fingerprint, a chunk per transaction."""
        last = ""
        while True:
            with self._session() as s:
                rows = s.execute(select(FingerprintRecord.sha256, FingerprintRecord.data)
                                 .where(FingerprintRecord.sha256 > last).order_by(FingerprintRecord.sha256)
                                 .limit(chunk)).all()
            yield from ((sha, data) for sha, data in rows)
            if len(rows) < chunk:
                return
            last = rows[-1][0]

    @_db_errors
    def drop_fingerprints(self, hashes: Iterable[str]) -> None:
        """Forget these fingerprints; duplicates takes them again from the photos when it needs them."""
        with self._session() as s:
            for part in _chunks(sorted(set(hashes))):
                s.execute(delete(FingerprintRecord).where(FingerprintRecord.sha256.in_(part)))

    @_db_errors
    def add_fingerprints(self, fingerprints: dict[str, bytes]) -> None:
        if fingerprints:
            with self._session() as s:
                _put_fingerprints(s.connection(), fingerprints)

    # writing ----------------------------------------------------------------------------------
    @_db_errors
    def write(self, changes: Changes) -> Written:
        """Apply one batch atomically, in set-based statements (executemany), not row by row; returns what
        FAISS must do to mirror it."""
        now = _now()
        with self._session() as s:
            meta = self._take_turn(s)  # concurrent writers never lose a version bump or race on a new path
            version = json.loads(meta.value)
            conn = s.connection()
            added_ids, added_vecs, removed, left = _write_upserts(conn, changes.upserts, now)
            if changes.fingerprints:
                _put_fingerprints(conn, changes.fingerprints)
            if changes.moves:
                conn.execute(update(_IMAGES).where(_IMAGES.c.id == bindparam("b_id")),
                             [{"b_id": i, "path": path, "size": size, "mtime_ns": mtime, "indexed_at": now}
                              for i, path, size, mtime in changes.moves])
            if changes.touches:
                conn.execute(update(_IMAGES).where(_IMAGES.c.id == bindparam("b_id")),
                             [{"b_id": i, "size": size, "mtime_ns": mtime} for i, size, mtime in changes.touches])
            if changes.deletes:
                had = conn.scalars(select(_VECTORS.c.image_id).where(_VECTORS.c.image_id.in_(changes.deletes)))
                removed.extend(had)
                left.update(h for h in conn.scalars(select(_IMAGES.c.sha256).where(_IMAGES.c.id.in_(changes.deletes))) if h)
                conn.execute(delete(_VECTORS).where(_VECTORS.c.image_id.in_(changes.deletes)))
                conn.execute(delete(_IMAGES).where(_IMAGES.c.id.in_(changes.deletes)))
            if left:
                _drop_unused_fingerprints(conn, left)
            if added_ids or removed:
                version += 1
                meta.value = json.dumps(version)
        dim = len(added_vecs[0]) if added_vecs else 0
        return Written(
            added_ids=np.array(added_ids, np.int64),
            added_vectors=np.stack(added_vecs) if added_vecs else np.zeros((0, dim), np.float32),  # float32 already
            removed_ids=np.array(removed, np.int64),
            version=version,
        )
