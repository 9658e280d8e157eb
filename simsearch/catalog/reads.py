"""Reading the catalog: rows by folder (in the listing's order), by path and by id; vectors; filters
(folder, dates, formats, size) and browsing newest first, a keyset page at a time; fingerprints; labels.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import BigInteger, cast, exists, func, or_, select

from ..errors import QueryError
from ..formats import catalog_format
from .engine import Database, _db_errors, _rows_in
from .schema import FAILED, OK, Entry, FingerprintRecord, ImageRecord, LabelRecord, VectorRecord, _VECTORS


@dataclass(frozen=True)
class ImageFilter:
    """Which indexed photos a query may return; every condition given must hold."""

    folder: str | None = None  # absolute path: the photo is under it
    # EXIF date taken, both ends inclusive; a date (not a datetime) means the whole day, so until 2018-12-31
    # keeps a photo taken that evening. Photos without a date taken never match a date.
    taken_from: date | None = None
    taken_until: date | None = None
    formats: tuple[str, ...] = ()  # format names or extensions, any case: JPEG, jpg, HEIF, heic, CR2, ...
    min_pixels: int | None = None  # width * height

    def __post_init__(self) -> None:
        """Formats as the catalog records them (formats.catalog_format); an unknown one is a QueryError."""
        try:
            object.__setattr__(self, "formats", tuple(dict.fromkeys(catalog_format(f) for f in self.formats)))
        except ValueError as exc:
            raise QueryError(str(exc)) from exc

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
    def of(cls, photo: Any) -> BrowseKey:
        """Where a page ended, from its last photo (a Photo from Store.browse)."""
        taken = photo.taken_at
        return cls(datetime.fromisoformat(taken) if taken else None, int(photo.mtime_ns or 0), int(photo.id))

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
        "decoded_from": r.decoded_from,
    }


_ENTRY = (ImageRecord.id, ImageRecord.path, ImageRecord.size, ImageRecord.mtime_ns, ImageRecord.sha256,
          ImageRecord.status)  # the columns of an Entry, in its field order


class Reads(Database):
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
    def photo_folders(self, limit: int = 5000) -> tuple[list[str], bool]:
        """The folders that directly hold indexed photos, sorted, at most limit of them, and whether there
        were more. Read a chunk at a time: one pass over the paths (about a second per million)."""
        found: set[str] = set()
        with self._session() as s:
            for path in s.scalars(select(ImageRecord.path).where(ImageRecord.status == OK)).yield_per(10_000):
                found.add(os.path.dirname(path))
        return sorted(found)[:limit], len(found) > limit

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
    def labelled(self) -> int:
        """How many indexed photos have labels."""
        has = exists().where(LabelRecord.sha256 == ImageRecord.sha256)
        with self._session() as s:
            return s.scalar(select(func.count()).select_from(ImageRecord).where(ImageRecord.status == OK, has)) or 0

    @_db_errors
    def unlabelled(self, after: int = 0, limit: int = 256) -> list[tuple[int, str, str]]:
        """(id, path, sha256) of indexed photos whose content has no labels yet, by id after `after`."""
        has = exists().where(LabelRecord.sha256 == ImageRecord.sha256)
        with self._session() as s:
            return [tuple(r) for r in s.execute(  # type: ignore[misc]
                select(ImageRecord.id, ImageRecord.path, ImageRecord.sha256)
                .where(ImageRecord.status == OK, ImageRecord.id > after, ~has).order_by(ImageRecord.id).limit(limit))]

    @_db_errors
    def labels_of(self, sha256: str) -> list[tuple[int, float]]:
        """A content's classes, most probable first."""
        with self._session() as s:
            return [(int(c), float(p)) for c, p in s.execute(
                select(LabelRecord.label, LabelRecord.probability).where(LabelRecord.sha256 == sha256)
                .order_by(LabelRecord.probability.desc(), LabelRecord.label))]

    @_db_errors
    def by_labels(self, classes: Iterable[int], f: ImageFilter | None, min_probability: float,
                  limit: int | None) -> list[tuple[int, float]]:
        """(id, probability) of the photos passing the filter whose classes among these add up to at least
        min_probability, most probable first (ties by id)."""
        score = func.sum(LabelRecord.probability)
        q = (select(ImageRecord.id, score).join(LabelRecord, LabelRecord.sha256 == ImageRecord.sha256)
             .where(LabelRecord.label.in_(sorted(set(classes))), *_filter_conditions(f or ImageFilter()))
             .group_by(ImageRecord.id).having(score >= min_probability).order_by(score.desc(), ImageRecord.id))
        with self._session() as s:
            return [(int(i), float(p)) for i, p in s.execute(q.limit(limit) if limit else q)]

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
