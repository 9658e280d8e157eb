"""Writing the catalog: one batch of changes (new and changed rows with their vectors, moves, touches,
deletions, fingerprints) in one transaction of bulk statements, COPY on PostgreSQL and the driver's
executemany on SQLite; what FAISS must do to mirror it comes back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import DateTime, bindparam, delete, insert, select, update

from ..paths import to_catalog
from ..verify import phashes
from .engine import _chunks, _db_errors, _now, _rows_in
from .meta import Meta
from .schema import (
    FAILED,
    OK,
    FingerprintRecord,
    ImageFields,
    LabelRecord,
    _FINGERPRINTS,
    _IMAGE_COLUMNS,
    _IMAGES,
    _LABELS,
    _Path,
    _VECTORS,
)


@dataclass
class Changes:
    """One batch of indexing, written in one transaction."""

    upserts: list[tuple[ImageFields, np.ndarray | None]] = field(default_factory=list)
    moves: list[tuple[int, str, int, int]] = field(default_factory=list)  # id, new path, size, mtime_ns
    touches: list[tuple[int, int, int]] = field(default_factory=list)  # id, size, mtime_ns
    deletes: list[int] = field(default_factory=list)
    fingerprints: dict[str, bytes] = field(default_factory=dict)  # sha256 -> fingerprint of new content
    labels: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # sha256 -> its top classes

    def __len__(self) -> int:
        return len(self.upserts) + len(self.moves) + len(self.touches) + len(self.deletes)


@dataclass(frozen=True)
class Written:
    """What a write did to vectors, so the caller can mirror it in FAISS."""

    added_ids: np.ndarray  # ids whose (new) vector is in added_vectors
    added_vectors: np.ndarray
    removed_ids: np.ndarray  # ids whose old vector must leave the index first
    version: int


def _put_fingerprints(conn: Any, fingerprints: dict[str, bytes]) -> None:
    """Store fingerprints by content, replacing any of another version."""
    for part in _chunks(list(fingerprints)):
        conn.execute(delete(_FINGERPRINTS).where(_FINGERPRINTS.c.sha256.in_(part)))
    conn.execute(insert(_FINGERPRINTS), [{"sha256": sha, "phash": phashes(data), "data": data}
                                         for sha, data in fingerprints.items()])


def _put_labels(conn: Any, labels: dict[str, list[tuple[int, float]]]) -> None:
    """Store each content's classes, replacing those it had (another classifier's)."""
    for part in _chunks(list(labels)):
        conn.execute(delete(_LABELS).where(_LABELS.c.sha256.in_(part)))
    rows = [{"sha256": sha, "label": c, "probability": p} for sha, top in labels.items() for c, p in top]
    if rows:
        conn.execute(insert(_LABELS), rows)


def _drop_unused(conn: Any, hashes: set[str]) -> None:
    """Fingerprints and labels of these contents that no row has any more (a file deleted or changed) leave too."""
    for part in _chunks(sorted(hashes)):
        used = select(_IMAGES.c.sha256).where(_IMAGES.c.sha256.in_(part))
        for table in (_FINGERPRINTS, _LABELS):
            conn.execute(delete(table).where(table.c.sha256.in_(part), table.c.sha256.not_in(used)))


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
                "status": OK if vec is not None else FAILED, "error": None if vec is not None else facts.error,
                "decoded_from": facts.decoded_from if vec is not None else None}

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


class Writes(Meta):
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
            if changes.labels:
                _put_labels(conn, changes.labels)
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
                _drop_unused(conn, left)
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

    @_db_errors
    def add_fingerprints(self, fingerprints: dict[str, bytes]) -> None:
        if fingerprints:
            with self._session() as s:
                _put_fingerprints(s.connection(), fingerprints)

    @_db_errors
    def add_labels(self, labels: dict[str, list[tuple[int, float]]]) -> None:
        if labels:
            with self._session() as s:
                _put_labels(s.connection(), labels)

    @_db_errors
    def clear_labels(self) -> None:
        """Forget every photo's labels (another classifier's are not comparable)."""
        with self._session() as s:
            s.execute(delete(LabelRecord))

    @_db_errors
    def drop_fingerprints(self, hashes: Iterable[str]) -> None:
        """Forget these fingerprints; duplicates takes them again from the photos when it needs them."""
        with self._session() as s:
            for part in _chunks(sorted(set(hashes))):
                s.execute(delete(FingerprintRecord).where(FingerprintRecord.sha256.in_(part)))
