"""File I/O with guarantees: atomic writes (a reader, or a process killed mid-write, sees the old content
or the new, never half), and opening a catalogued file only while it is still what was catalogued."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from .errors import ChangedError, ImageError, NotFoundError, StoreError


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename, fsync the folder. A full disk is a StoreError that
    says so; the old content stays."""
    path = Path(path)
    try:
        _atomic_write(path, data)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreError(f"no space left on the disk of {path.parent} while writing {path.name}; "
                             f"its earlier content is kept (free some space, then run again)") from exc
        raise


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def publish_dir(tmp: Path, final: Path) -> bool:
    """Rename a fully written folder into place (its files fsynced here first). False, and tmp removed,
    when another process published the same folder first: both wrote the same thing, one wins."""
    for f in tmp.rglob("*"):
        if f.is_file():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    _fsync_dir(final.parent)
    return True


def open_verified(path: str, roots: Iterable[str], *, size: int | None, mtime_ns: int | None, sha256: str | None,
                  max_bytes: int, what: str) -> BinaryIO:
    """Open a catalogued file only if it is still what was catalogued: inside one of `roots` once links are
    resolved (a file swapped for a link to elsewhere is not followed), a regular file, and of the recorded
    size and time, or else of the recorded content. The caller closes it."""
    real = os.path.realpath(path)
    if not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in map(os.path.realpath, roots)):
        raise NotFoundError(f"{what} is no longer inside the indexed folders")
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise NotFoundError(f"{what} is no longer on disk ({exc.strerror})") from exc
    f = os.fdopen(fd, "rb")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotFoundError(f"{what} is no longer a regular file")
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns) and not _has_content(f, sha256, max_bytes):
            raise ChangedError(f"{what} changed since it was indexed: run `simsearch index` again")
        f.seek(0)
    except BaseException:
        f.close()
        raise
    return f


def _has_content(f: BinaryIO, sha256: str | None, max_bytes: int) -> bool:
    digest, size = hashlib.sha256(), 0
    while chunk := f.read(1 << 20):
        size += len(chunk)
        if size > max_bytes:
            return False
        digest.update(chunk)
    return digest.hexdigest() == sha256


def move_to_trash(path: str) -> None:
    """Into the platform's trash (send2trash), never a deletion: a wrong decision can be undone."""
    from send2trash import send2trash

    send2trash(path)


def read_bounded(stream: BinaryIO, source: str | Path, max_bytes: int, *, what: str = "file",
                 deadline: float | None = None) -> bytes:
    """All of a stream, refused once it passes max_bytes (or the time.monotonic() deadline): a file that
    grows while read, a download or a pipe without end cannot exhaust memory or hang a job."""
    chunks, size = [], 0
    while chunk := stream.read(1 << 20):
        size += len(chunk)
        if size > max_bytes:
            raise ImageError(source, f"{what} is over the limit of {max_bytes} bytes")
        if deadline is not None and time.monotonic() > deadline:
            raise ImageError(source, f"cannot read {what}: it did not arrive in time")
        chunks.append(chunk)
    return b"".join(chunks)
