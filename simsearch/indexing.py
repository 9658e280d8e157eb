"""One indexing run: bring a store up to date with a folder.

The rule, in order:
1. Scan: every image file under the folder, compared with the catalog by size and mtime. Equal: unchanged,
   never read. Different or new: a task. Catalogued but gone: missing (a deletion, unless it moved).
2. A source (simsearch.prepare) reads, hashes and classifies each task, in order: embed, touch, move,
   copy or failed; only files to embed are decoded.
3. Items are consumed in order: pixels are embedded a model batch at a time (`embed`), and the rows are
   written (`flush`) once a second or every 1,024 rows, whichever comes first, each write one transaction
   in the collection (simsearch.collection holds the crash-safety rule).
   A move re-paths the missing row, keeping its id and vector; a copy reuses an indexed vector.
4. What is still missing at the end was deleted: its rows go, in bounded transactions.
Every file gets a row, a failure included, so one bad photo never stops a run and is listed with its reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from .catalog import OK, Changes, Entry, ImageFields
from .classifier import StoreLabels
from .collection import Collection
from .config import Settings
from .embedding import l2_normalize
from .errors import ImageError, StoreError
from .formats import ScanOptions, walk_images
from .paths import to_catalog
from .prepare import Classifier, Kind, Prepared, Source, SourceStats, Task, decode_now
from .provenance import StoreModel
from .results import IndexReport, Progress

WRITE_ROWS = 1024  # rows of one write at most: bulk speed (a Ray merge at 4x the rows/s of 32-row writes)


@dataclass
class Counts:
    added: int = 0
    updated: int = 0
    moved: int = 0
    failed: int = 0
    unchanged: int = 0

    def embedded(self, task: Task) -> None:
        if task.is_update:
            self.updated += 1
        else:
            self.added += 1


@dataclass
class Timings:
    """Seconds per stage; decode is summed over the decoding threads (or Ray tasks)."""

    scan: float = 0.0
    decode: float = 0.0
    embed: float = 0.0
    write: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        stages = {k: v for k, v in asdict(self).items() if k != "extra"} | self.extra
        return {k: round(v, 3) for k, v in stages.items()}


@dataclass
class CpuMeter:
    """Where the run's CPU went, per photo embedded, and how near the run came to what the cores allow:
    bound = cores / (CPU per photo). Decode CPU is the decode threads' own; the model's is the process's
    less decoding, less the main thread's other work (classifying, writing), less loading the model, since
    its runtime's threads cannot be timed one by one. The ratio to the bound is how busy the cores were."""

    decode: float = 0.0
    photos: int = 0
    _process: float = field(default_factory=time.process_time)
    _main: float = field(default_factory=time.thread_time)
    _wall: float = field(default_factory=time.perf_counter)
    _in_model: float = 0.0  # main thread CPU inside the model call: the model's
    _loading: tuple[float, float, float] = (0.0, 0.0, 0.0)  # process CPU, main CPU, wall

    def loaded(self, process: float, main: float, wall: float) -> None:
        a, b, c = self._loading
        self._loading = (a + process, b + main, c + wall)

    def embedded(self, photos: int, main_cpu: float) -> None:
        self.photos += photos
        self._in_model += main_cpu

    def report(self) -> dict[str, float]:
        """Milliseconds of CPU per photo by stage, the bound and this run's share of it; {} when nothing
        was embedded here (a no-change run; a Ray run, whose workers report their own)."""
        if not self.photos:
            return {}
        load_process, load_main, load_wall = self._loading
        process = time.process_time() - self._process - load_process
        other = max(0.0, time.thread_time() - self._main - load_main - self._in_model)
        model = max(0.0, process - self.decode - other)
        wall = max(1e-9, time.perf_counter() - self._wall - load_wall)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        per_photo = (self.decode + model + other) / self.photos
        bound = cores / per_photo if per_photo > 0 else 0.0
        rate = self.photos / wall
        return {"photos": self.photos, "decode_ms": round(1000 * self.decode / self.photos, 2),
                "model_ms": round(1000 * model / self.photos, 2), "other_ms": round(1000 * other / self.photos, 2),
                "cores": cores, "bound_per_s": round(bound, 1), "per_s": round(rate, 1),
                "of_bound": round(rate / bound, 3) if bound else 0.0}


@dataclass
class Scan:
    tasks: list[Task] = field(default_factory=list)
    seen: int = 0
    missing: dict[str, Entry] = field(default_factory=dict)  # catalogued under the folder, not found in it
    unreadable: Changes = field(default_factory=Changes)  # files that cannot even be stat'ed


def _key(entry: Entry | None) -> str:
    return "" if entry is None else to_catalog(entry.path)


def scan(folder: Path, entries: Iterable[Entry], counts: Counts, options: ScanOptions) -> Scan:
    """Compare the folder with its catalog entries by size and mtime; nothing is read here.

    Both come in path order (formats.walk_images, Catalog.entries_under), so this is a merge join: memory
    follows the files that changed, not the folder's size. Catalogued files that are now left out (junk,
    excluded) count as missing, so they leave the store."""
    out = Scan()
    rows = iter(entries)
    row = next(rows, None)
    row_key = _key(row)  # each row's key computed once
    last = ""
    unreadable: dict[str, str] = {}  # filled by the walk as it meets them, before the rows under them

    def gone(entry: Entry) -> None:
        if not any(entry.path == f or entry.path.startswith(f + os.sep) for f in unreadable):
            out.missing[entry.path] = entry

    for path, entry in walk_images(folder, options, unreadable):
        key = to_catalog(path)  # the order both sides come in (simsearch.paths)
        if key <= last:  # the merge's premise; never expected, and never worth a wrong deletion
            raise StoreError(f"folder listing out of order at {path!r} after {last!r}")
        last = key
        out.seen += 1
        while row is not None and row_key < key:
            gone(row)
            row = next(rows, None)
            row_key = _key(row)
        old = None
        if row is not None and row.path == path:
            old, row = row, next(rows, None)
            row_key = _key(row)
        try:
            st = entry.stat()
        except OSError as exc:
            out.unreadable.upserts.append((ImageFields(path, None, None, None, error=f"cannot read file: {exc.strerror or exc}"), None))
            continue
        if old is not None and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns:
            counts.unchanged += 1
        else:
            out.tasks.append(Task(path, st.st_size, st.st_mtime_ns, old))
    while row is not None:
        gone(row)
        row = next(rows, None)
    for f, reason in unreadable.items():  # a recorded failure, which goes once the folder lists again
        out.unreadable.upserts.append((ImageFields(f, None, None, None, error=reason), None))
    return out


class IndexRun:
    """Consumes a source's prepared items in order and writes them in batches; one run, one object."""

    def __init__(self, collection: Collection, model: StoreModel, settings: Settings, folder: Path,
                 options: ScanOptions = ScanOptions(), *, progress: Callable[[Progress], None] | None = None,
                 started: float | None = None, labels: StoreLabels | None = None) -> None:
        self.collection, self.model, self.settings, self.folder = collection, model, settings, folder
        self.labels = labels if labels is not None and labels.enabled else None  # classified with the model
        self.labelled = 0
        self.options = options
        self.progress = progress
        self.started = time.perf_counter() if started is None else started  # the report's seconds count from here
        self.counts, self.timings = Counts(), Timings()
        self.total = self.done = 0
        self.pending = Changes()
        self.batch: list[Prepared] = []
        self.movable: dict[str, Entry] = {}
        self.known: dict[str, int] = {}
        self.missing: dict[str, Entry] = {}
        self.last_save = self.last_write = time.perf_counter()
        self.cpu = CpuMeter()
        self.cpu_use: dict[str, float] = {}

    def run(self, source: Source) -> IndexReport:
        t = time.perf_counter()
        found = scan(self.folder, self.collection.catalog.entries_under(str(self.folder)), self.counts, self.options)
        self.missing = found.missing
        self.movable = {e.sha256: e for e in found.missing.values() if e.status == OK and e.sha256}
        if found.tasks:  # an unchanged re-run never loads the store's hashes
            self.known = self.collection.catalog.ok_hashes()
        self.timings.scan = time.perf_counter() - t
        self.counts.failed = len(found.unreadable.upserts)
        self.collection.apply(found.unreadable)
        self.total = len(found.tasks)
        self._report_progress()
        stats = SourceStats()
        if found.tasks:
            self.cpu = CpuMeter()
            self._consume(source.items(found.tasks, Classifier(frozenset(self.movable), self.known)))
            self.cpu_use = self.cpu.report()
            self.collection.checkpoint()
            stats = source.finish()  # every row is committed: a source may drop what it staged
        self.timings.extra |= stats.timings
        gone = [e.id for e in self.missing.values()]
        self.collection.delete(gone)
        return self._report(found.seen, len(gone), stats)

    def _consume(self, items: Iterable[Prepared]) -> None:
        s = self.settings
        for item in items:
            self.timings.decode += item.seconds
            self.cpu.decode += item.cpu_seconds
            self._take(item)
            if len(self.batch) >= s.batch_size:
                self.embed()
            if len(self.pending) >= WRITE_ROWS or (
                    self.pending and time.perf_counter() - self.last_write >= s.commit_every_s):
                self.flush()  # the rows embedded so far; a partial model batch waits to be filled
        self.embed()
        self.flush()

    def _take(self, item: Prepared) -> None:
        task = item.task
        match item.kind:
            case Kind.EMBED:
                self.batch.append(item)
                self.counts.embedded(task)
            case Kind.FAILED:
                self.pending.upserts.append((item.fields(), None))
                self.counts.failed += 1
            case Kind.TOUCH:
                assert task.old is not None
                self.counts.unchanged += 1
                self.pending.touches.append((task.old.id, task.size, task.mtime_ns))
            case Kind.MOVE if item.sha256 in self.movable:
                src = self.movable.pop(item.sha256)
                self.missing.pop(src.path, None)
                self.pending.moves.append((src.id, task.path, task.size, task.mtime_ns))
                self.counts.moved += 1
            case _:  # a copy (or a second file moved from the same content): reuse an indexed vector
                self._take_copy(item)

    def _take_copy(self, item: Prepared) -> None:
        src_id = self.known.get(item.sha256 or "")
        if src_id is not None and self._copy(item, src_id):
            self.counts.embedded(item.task)
            return
        try:  # the source row was re-embedded or removed earlier in this run: embed this file itself
            self.batch.append(item if item.vector is not None else decode_now(item, self.model.decoding))
            self.counts.embedded(item.task)
        except ImageError as exc:
            self.pending.upserts.append((replace(item, info=None, error=exc.reason).fields(), None))
            self.counts.failed += 1

    def _copy(self, item: Prepared, src_id: int) -> bool:
        """Queue a row that reuses src_id's vector; False if that row no longer holds this content."""
        rec = self.collection.catalog.records([src_id]).get(src_id)
        vec = self.collection.vector(src_id)
        if rec is None or vec is None or rec["sha256"] != item.sha256:
            return False
        task, taken = item.task, rec["taken_at"]
        fields = ImageFields(task.path, task.size, task.mtime_ns, item.sha256, rec["width"], rec["height"],
                             rec["format"], datetime.fromisoformat(taken) if taken else None,
                             decoded_from=rec["decoded_from"])
        self.pending.upserts.append((fields, vec))
        return True

    def embed(self) -> None:
        """The batch's pixels become vectors in the pending rows (items from Ray come with theirs)."""
        todo = [b.pixels for b in self.batch if b.vector is None]
        tops: Iterator[list[tuple[int, float]]] = iter(())
        if todo:
            t, p, m = time.perf_counter(), time.process_time(), time.thread_time()
            embedder = self.model.embedder  # loads the model on first use, timed apart as model_load
            head = self.labels.head(embedder) if self.labels is not None else None  # decided once per store
            self.cpu.loaded(time.process_time() - p, time.thread_time() - m, time.perf_counter() - t)
            t, m = time.perf_counter(), time.thread_time()
            pixels = np.stack(todo)
            if head is not None:  # labels from the classifier's head on the model's own outputs: one pass
                raw = embedder.outputs(pixels)
                vectors, tops = l2_normalize(raw), iter(head.top(raw))
            else:
                vectors = embedder.embed(pixels)
            embedded = iter(vectors)
            self.timings.embed += time.perf_counter() - t
            self.cpu.embedded(len(todo), time.thread_time() - m)
            if self.labels is not None and head is None:
                tops = self._classify(pixels)
        for b in self.batch:
            self.pending.upserts.append((b.fields(), b.vector if b.vector is not None else next(embedded)))
            if b.fingerprint is not None and b.sha256:
                self.pending.fingerprints[b.sha256] = b.fingerprint
            if b.vector is None and self.labels is not None:
                top = next(tops)
                if b.sha256:
                    self.pending.labels[b.sha256] = top
                    self.labelled += 1
        self.batch = []

    def _classify(self, pixels: np.ndarray) -> Iterator[list[tuple[int, float]]]:
        """The batch's classes from the store's classifier, on the pixels the model had."""
        assert self.labels is not None
        t, p, m = time.perf_counter(), time.process_time(), time.thread_time()
        classifier = self.labels.classifier  # loaded on first use, timed apart as model_load
        self.cpu.loaded(time.process_time() - p, time.thread_time() - m, time.perf_counter() - t)
        t, m = time.perf_counter(), time.thread_time()
        tops = classifier.top(pixels)
        self.timings.extra["labels"] = self.timings.extra.get("labels", 0.0) + time.perf_counter() - t
        self.cpu.embedded(0, time.thread_time() - m)  # the classifier's CPU is model CPU
        return iter(tops)

    def flush(self) -> None:
        """Write the pending rows in one transaction, checkpoint now and then."""
        t = time.perf_counter()
        self.collection.apply(self.pending)
        self.timings.write += time.perf_counter() - t
        self.done += len(self.pending.upserts) + len(self.pending.moves) + len(self.pending.touches)
        self.pending = Changes()
        self.last_write = time.perf_counter()
        if self.last_write - self.last_save > self.settings.save_every_s:
            self.collection.checkpoint()
            self.last_save = time.perf_counter()
        self._report_progress()

    def _report_progress(self) -> None:
        if self.progress:
            self.progress(Progress(self.done, self.total, self.counts.failed, time.perf_counter() - self.started))

    def _report(self, scanned: int, removed: int, stats: SourceStats) -> IndexReport:
        c = self.counts
        return IndexReport(
            folder=str(self.folder), scanned=scanned, added=c.added, updated=c.updated, moved=c.moved,
            removed=removed, unchanged=c.unchanged, failed=c.failed, seconds=time.perf_counter() - self.started,
            timings=self.timings.as_dict(), ray=stats.ray, cpu=self.cpu_use,
        )
