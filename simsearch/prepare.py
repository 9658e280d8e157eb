"""From a file that needs work to a prepared item: read, hash, classify, decode.

A file whose size or time changed is read and hashed; its hash decides what it needs (`Kind`): a new
vector (`EMBED`), only a new timestamp (`TOUCH`, same bytes), a new path for an indexed row whose file
vanished (`MOVE`), or a copy of a vector already indexed (`COPY`). Only `EMBED` files are decoded.

A *source* turns tasks into prepared items in task order: `LocalSource` on a small thread pool here,
`simsearch.distributed.RaySource` on a Ray cluster. Both classify with the same `Classifier` and read
with the same `decode_file`, so a run gives the same store wherever it ran.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import BinaryIO, Protocol

import numpy as np

from .catalog import OK, Entry, ImageFields
from .config import DEFAULT_MAX_FILE_BYTES, Settings
from .errors import ImageError
from .images import ImageInfo, load_image, load_photo, open_file, read_file
from .verify import DECODE_SIDE, FingerprintError
from .verify import fingerprint as take_fingerprint


STREAM_ABOVE = 64 << 20  # bytes: a file larger than this is streamed (see decode_file)


class Kind(Enum):
    EMBED = "embed"
    TOUCH = "touch"
    MOVE = "move"
    COPY = "copy"
    FAILED = "failed"


@dataclass(frozen=True)
class Task:
    """A file whose size or time differs from the catalog's (or that the catalog lacks)."""

    path: str
    size: int
    mtime_ns: int
    old: Entry | None

    @property
    def is_update(self) -> bool:
        """A file that failed before and now indexes is new to the index, not an update."""
        return self.old is not None and self.old.status == OK


@dataclass(frozen=True)
class Decoding:
    """How a file becomes model input; the same settings on every machine that decodes."""

    input_size: tuple[int, int]  # (height, width)
    resize: str
    max_pixels: int
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    stream_above: int = STREAM_ABOVE  # larger files are hashed and decoded from the file, never held whole

    @classmethod
    def of(cls, input_size: tuple[int, int], settings: Settings) -> Decoding:
        """A store's decoding: its model's input size and the settings' (resolved) limits."""
        return cls(input_size, str(settings.resize), settings.max_pixels, settings.max_file_bytes)

    def read(self, path: str | os.PathLike[str]) -> bytes:
        return read_file(path, self.max_file_bytes)

    def load(self, source: str | bytes | BinaryIO | object, name: str | None = None) -> tuple[np.ndarray, ImageInfo]:
        if isinstance(source, (str, os.PathLike)):
            source, name = self.read(source), str(source)
        return load_image(source, self.input_size, policy=self.resize, max_pixels=self.max_pixels,  # type: ignore[arg-type]
                          name=name)

    def load_with_fingerprint(self, source: str | bytes | BinaryIO, name: str | None = None, *,
                              keypoints: bool = False) -> tuple[np.ndarray, ImageInfo, bytes | None]:
        """Model input and the duplicate fingerprint (simsearch.verify; its hashes alone unless keypoints),
        from one decode when the model takes DECODE_SIDE or more (a second, larger decode for a smaller
        model: the fingerprint must not shrink with it, nor the model's pixels change for it). A photo the
        model can take but the fingerprint cannot (OpenCV refused it) is indexed without one."""
        if isinstance(source, (str, os.PathLike)):
            source, name = self.read(source), str(source)
        pixels, info, rgb = load_photo(source, self.input_size, policy=self.resize, max_pixels=self.max_pixels,
                                       name=name)
        if min(self.input_size) < DECODE_SIDE:
            rgb = load_photo(source, (DECODE_SIDE, DECODE_SIDE), max_pixels=self.max_pixels, name=name)[2]
        try:
            return pixels, info, take_fingerprint(rgb, keypoints=keypoints).to_bytes()
        except FingerprintError:
            return pixels, info, None

    def fingerprint(self, path: str) -> bytes:
        """A file's whole duplicate fingerprint, keypoints too, from a fresh decode (raises ImageError)."""
        found = self.load_with_fingerprint(path, keypoints=True)[2]
        if found is None:
            raise ImageError(path, "cannot take its duplicate fingerprint")
        return found


@dataclass(frozen=True)
class Decoded:
    """What reading a file gave: its hash (None if unreadable), pixels or the reason they are missing."""

    sha256: str | None
    pixels: np.ndarray | None = None
    info: ImageInfo | None = None
    error: str | None = None
    vector: np.ndarray | None = None  # already embedded (by a Ray worker)
    fingerprint: bytes | None = None  # for duplicate verification


def decode_file(path: str, decoding: Decoding, wanted: Callable[[str], bool] = lambda sha: True, *,
                fingerprint: bool = True) -> Decoded:
    """Read and hash a file, and decode it when `wanted(sha256)` (with its duplicate fingerprint unless
    told not to); a bad file is an error, never an exception. A file over decoding.stream_above is
    hashed a chunk at a time and decoded from the file itself: a 500 MB file is not held in memory beside
    its pixels."""
    try:
        large = os.stat(path).st_size > decoding.stream_above
    except OSError:
        large = False  # read_file says why
    try:
        if large:
            return _decode_large(path, decoding, wanted, fingerprint)
        data = decoding.read(path)
    except ImageError as exc:
        return Decoded(None, error=exc.reason)
    sha = hashlib.sha256(data).hexdigest()
    if not wanted(sha):
        return Decoded(sha)
    return _decoded(sha, data, path, decoding, fingerprint)


def _decoded(sha: str, source: bytes | BinaryIO, path: str, decoding: Decoding, fingerprint: bool) -> Decoded:
    try:
        if not fingerprint:
            return Decoded(sha, *decoding.load(source, name=path))
        pixels, info, fp = decoding.load_with_fingerprint(source, name=path)
    except ImageError as exc:
        return Decoded(sha, error=exc.reason)
    return Decoded(sha, pixels, info, fingerprint=fp)


def _decode_large(path: str, decoding: Decoding, wanted: Callable[[str], bool], fingerprint: bool) -> Decoded:
    with open_file(path, decoding.max_file_bytes) as f:
        before = os.fstat(f.fileno())
        digest, size = hashlib.sha256(), 0
        try:
            while chunk := f.read(1 << 22):
                size += len(chunk)
                if size > decoding.max_file_bytes:
                    raise ImageError(path, f"file is over the limit of {decoding.max_file_bytes} bytes")
                digest.update(chunk)
        except OSError as exc:
            raise ImageError(path, f"cannot read file: {exc.strerror or exc}") from exc
        sha = digest.hexdigest()
        if not wanted(sha):
            return Decoded(sha)
        decoded = _decoded(sha, f, path, decoding, fingerprint)
        after = os.fstat(f.fileno())
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        return Decoded(sha, error="the file changed while it was read; it is read again on the next run")
    return decoded


@dataclass(frozen=True)
class Prepared:
    task: Task
    kind: Kind
    sha256: str | None = None
    pixels: np.ndarray | None = None
    info: ImageInfo | None = None
    error: str | None = None
    seconds: float = 0.0  # spent reading and decoding it
    cpu_seconds: float = 0.0  # CPU time of the thread that read and decoded it
    vector: np.ndarray | None = None
    fingerprint: bytes | None = None

    def fields(self) -> ImageFields:
        """The catalog row this item becomes (a failure when it has no image info)."""
        t, info = self.task, self.info
        if info is None:
            return ImageFields(t.path, t.size, t.mtime_ns, self.sha256, error=self.error)
        return ImageFields(t.path, t.size, t.mtime_ns, self.sha256, info.width, info.height, info.format,
                           info.taken_at, decoded_from=info.decoded_from)


@dataclass(frozen=True)
class Classifier:
    """Decides what a file needs from its hash and what the catalog already holds."""

    movable: frozenset[str]  # hashes of indexed rows whose files are gone from the folder
    known: Mapping[str, int] = field(default_factory=dict)  # hash -> id of an indexed row with that content

    def kind(self, task: Task, sha: str) -> Kind:
        if task.old is not None and task.old.sha256 == sha:
            return Kind.TOUCH  # only the timestamp changed
        if task.old is None and sha in self.movable:
            return Kind.MOVE
        if sha in self.known or sha in self.movable:
            return Kind.COPY
        return Kind.EMBED

    def item(self, task: Task, decoded: Decoded, seconds: float = 0.0, cpu: float = 0.0) -> Prepared:
        """A touch or move needs no pixels, so only a file to embed fails for a decode error."""
        if decoded.sha256 is None:
            return Prepared(task, Kind.FAILED, error=decoded.error, seconds=seconds, cpu_seconds=cpu)
        kind = self.kind(task, decoded.sha256)
        if kind is Kind.EMBED and decoded.error is not None:
            return Prepared(task, Kind.FAILED, decoded.sha256, error=decoded.error, seconds=seconds, cpu_seconds=cpu)
        return Prepared(task, kind, decoded.sha256, decoded.pixels, decoded.info, seconds=seconds,
                        cpu_seconds=cpu, vector=decoded.vector, fingerprint=decoded.fingerprint)


def decode_now(item: Prepared, decoding: Decoding) -> Prepared:
    """A copy whose source row changed during the run needs its own pixels after all (raises ImageError)."""
    pixels, info, fp = decoding.load_with_fingerprint(item.task.path)
    return replace(item, kind=Kind.EMBED, pixels=pixels, info=info, fingerprint=fp)


@dataclass(frozen=True)
class SourceStats:
    """What a source measured itself, reported when the run is complete."""

    timings: dict[str, float] = field(default_factory=dict)  # replaces the run's own stage sums
    ray: dict[str, float] = field(default_factory=dict)


class Source(Protocol):
    def items(self, tasks: Sequence[Task], classifier: Classifier) -> Iterator[Prepared]:
        """One prepared item per task, in task order."""
        ...

    def finish(self) -> SourceStats:
        """Called once every item is committed."""
        ...


@dataclass(frozen=True)
class LocalSource:
    """Read, hash and decode on a thread pool (Pillow releases the GIL), in order, at most a few batches
    ahead of the writer, so memory stays bounded on any folder size."""

    decoding: Decoding
    workers: int
    ahead: int
    fingerprints: bool = True  # take duplicate fingerprints from the same decode

    def items(self, tasks: Sequence[Task], classifier: Classifier) -> Iterator[Prepared]:
        def prepare(task: Task) -> Prepared:
            t, c = time.perf_counter(), time.thread_time()
            decoded = decode_file(task.path, self.decoding, lambda sha: classifier.kind(task, sha) is Kind.EMBED,
                                  fingerprint=self.fingerprints)
            return classifier.item(task, decoded, time.perf_counter() - t, time.thread_time() - c)

        with ThreadPoolExecutor(self.workers, thread_name_prefix="simsearch-decode") as pool:
            window: deque[Future[Prepared]] = deque()
            it = iter(tasks)
            try:
                while True:
                    while len(window) < self.ahead and (task := next(it, None)) is not None:
                        window.append(pool.submit(prepare, task))
                    if not window:
                        return
                    yield window.popleft().result()
            finally:
                for fut in window:
                    fut.cancel()

    def finish(self) -> SourceStats:
        return SourceStats()
