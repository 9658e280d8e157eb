"""The store: indexing a folder (read -> decode -> embed -> write, in batches) and querying it.

Crash safety: every batch is one catalog transaction, and the catalog holds the vectors. The FAISS
file is a checkpoint of them, written atomically with the catalog's `vectors_version`; on open a
file that disagrees with the catalog (version, count or ids) is rebuilt from it. So a killed run
loses at most the batch in flight, and the next run resumes from what was committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from .catalog import OK, Catalog, Changes, Entry, ImageFields, ImageFilter
from .config import (
    DEFAULT_MODEL,
    DEFAULT_PRECISION,
    DEFAULT_RESIZE,
    DEFAULT_RUNTIME,
    RUNTIME_ENV,
    ModelSpec,
    Settings,
    default_store_dir,
)
from .distributed import RayOptions, RayRun
from .embedder import Embedder, l2_normalize, load_embedder
from .errors import (
    EmptyStoreError,
    ImageError,
    ModelMismatchError,
    NotFoundError,
    QueryError,
    SimsearchError,
    StoreError,
)
from .files import atomic_write
from .handles import local_fingerprint, normalize_handle
from .images import ImageInfo, array_to_image, find_images, load_image, read_file
from .index import VectorIndex, recall_at_k, rescore, tune_nprobe, without_self
from .quantize import CALIBRATION_PHOTOS, INT8_DIR, open_int8, quantize_int8

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a second writer is then the user's responsibility
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

CATALOG_FILE = "catalog.sqlite"
INDEX_FILE = "index.faiss"
INDEX_STATE_FILE = "index.json"
TEMPLATE_FILE = "index.trained.faiss"  # the empty trained IVF index: rebuilds need no training
EXACT_FILTER_LIMIT = 50_000  # filters matching fewer photos are searched exactly, whatever the index
LOCK_FILE = "lock"
STAGING_DIR = "staging"  # default home of the Parquet shards of an index run on Ray


class _AsDict:
    """Results print as JSON through to_dict()."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class Progress:
    """Reported after every committed batch; `total` counts the files that needed work."""

    done: int
    total: int
    failed: int
    elapsed: float


@dataclass(frozen=True)
class IndexReport(_AsDict):
    folder: str
    scanned: int
    added: int
    updated: int
    moved: int
    removed: int
    unchanged: int
    failed: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (decode summed over workers)
    ray: dict[str, float] = field(default_factory=dict)  # with --ray: shards run and reused, seconds in Ray



@dataclass(frozen=True)
class Hit(_AsDict):
    id: int
    path: str
    score: float
    size: int | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    taken_at: str | None = None
    mtime: float | None = None
    sha256: str | None = None



@dataclass(frozen=True)
class Failure(_AsDict):
    id: int
    path: str
    reason: str
    size: int | None
    indexed_at: str



DEFAULT_DUPLICATE_THRESHOLD = 0.95


@dataclass(frozen=True)
class DuplicateGroup(_AsDict):
    """Photos that are copies of each other: `exact` when every file has the same bytes, else `near`."""

    kind: str
    keep: str  # the suggested one to keep: largest resolution, then oldest
    min_score: float  # the lowest similarity that links the group (1.0 for exact copies)
    members: list[dict[str, Any]]


@dataclass(frozen=True)
class _Task:
    path: str
    size: int
    mtime_ns: int
    old: Entry | None


def _new_or_updated(task: _Task) -> str:
    """A file that failed before and now indexes is new to the index, not an update."""
    return "updated" if task.old is not None and task.old.status == OK else "added"


@dataclass
class _Prepared:
    task: _Task
    kind: str  # "embed" | "touch" | "move" | "copy" | "failed"
    sha256: str | None = None
    pixels: np.ndarray | None = None
    info: ImageInfo | None = None
    error: str | None = None
    seconds: float = 0.0
    vector: np.ndarray | None = None  # already embedded (by a Ray worker)


def _classify(task: _Task, sha: str, movable: frozenset[str] | dict[str, Entry], known: dict[str, int]) -> str:
    """What a file whose bytes hash to sha needs: the same decision whether it is indexed here or on Ray."""
    if task.old is not None and task.old.sha256 == sha:
        return "touch"  # only the timestamp changed
    if task.old is None and sha in movable:
        return "move"
    if sha in known or sha in movable:
        return "copy"
    return "embed"


def open(
    store: str | os.PathLike[str] | None = None,
    *,
    model: str | os.PathLike[str] | Embedder | None = None,
    db: Any = None,
    settings: Settings | None = None,
    create: bool = True,
) -> Store:
    """Open (or, with create, make) a store folder.

    model: a TF-Hub handle (URL or module folder) or an Embedder; by default SIMSEARCH_MODEL, else the
    model the store was built with, else the Inception V2 module. db: a SQLAlchemy URL or Engine;
    by default SQLite in the store folder.
    """
    return Store(store, model=model, db=db, settings=settings, create=create)


class Store:
    """A folder with a catalog and a vector index, built with one model."""

    def __init__(
        self,
        store: str | os.PathLike[str] | None = None,
        *,
        model: str | os.PathLike[str] | Embedder | None = None,
        db: Any = None,
        settings: Settings | None = None,
        create: bool = True,
    ) -> None:
        self.root = Path(store).expanduser() if store is not None else default_store_dir()
        if not create and db is None and not (self.root / CATALOG_FILE).exists():
            raise NotFoundError(f"no store at {self.root}: build one with `simsearch index FOLDER --store {self.root}`")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create store folder {self.root}: {exc.strerror or exc}") from exc
        self.root = self.root.resolve()
        self.catalog = Catalog(db if db is not None else f"sqlite:///{self.root / CATALOG_FILE}")
        settings = settings or Settings()
        self._recorded: dict[str, Any] | None = self.catalog.get_meta("model")
        recorded = self._recorded or {}
        resize = settings.resize or recorded.get("resize") or DEFAULT_RESIZE
        # stores made before precision was recorded are fp32
        precision = settings.precision or (recorded.get("precision", "fp32") if recorded else DEFAULT_PRECISION)
        runtime = settings.runtime or os.environ.get(RUNTIME_ENV) or DEFAULT_RUNTIME
        if precision == "int8":
            runtime = "openvino"  # the only runtime that runs the quantized model (simsearch.quantize)
        self.settings = Settings(**{**asdict(settings), "resize": resize, "precision": precision,
                                    "runtime": runtime})
        self._embedder: Embedder | None = None
        self._model_lock = threading.Lock()
        self.model_load_seconds = 0.0
        self._model_arg = model
        if model is None and os.environ.get("SIMSEARCH_MODEL"):
            self._model_arg = os.environ["SIMSEARCH_MODEL"]
        try:
            self._check_provenance()
            self._record_fingerprint()
        except SimsearchError:
            self.catalog.close()
            raise
        self._index: VectorIndex | None = None
        # Writers change the catalog and FAISS together under this lock, and a search plus its catalog
        # lookup run under it too, so a reader in another thread sees one committed state, never a torn one.
        self._lock = threading.RLock()
        self._version = 0
        self.rebuilt_index = False
        if self._recorded:
            self._open_index(int(self._recorded["dim"]))

    # provenance -------------------------------------------------------------------------------
    @property
    def model_handle(self) -> str:
        arg = self._model_arg
        if isinstance(arg, Embedder):
            return arg.spec.handle
        if arg is not None:
            return normalize_handle(arg)
        return self._recorded["model"] if self._recorded else DEFAULT_MODEL

    def _same_model(self, spec: ModelSpec | None) -> bool:
        """Identity by content: the module's fingerprint where both sides have one, else the handle.
        Before the model is loaded, a handle whose files are not here yet (a URL not fetched) passes;
        its content is checked once it is loaded."""
        rec = self._recorded
        assert rec is not None
        rec_fp = rec.get("fingerprint")
        if spec is not None:
            if spec.fingerprint and rec_fp:
                return spec.fingerprint == rec_fp
            return spec.handle == rec["model"] or (spec.fingerprint is not None and spec.fingerprint ==
                                                    local_fingerprint(rec["model"]))
        handle = self.model_handle
        if isinstance(self._model_arg, Embedder) or handle == rec["model"]:
            return handle == rec["model"]
        arg_fp = local_fingerprint(handle)
        if arg_fp is None:
            return True  # not fetched yet: checked by content once loaded
        return arg_fp == (rec_fp or local_fingerprint(rec["model"]))

    def _check_provenance(self, spec: ModelSpec | None = None) -> None:
        rec = self._recorded
        if not rec:
            return
        problems = []
        if not self._same_model(spec):
            problems.append(f"model {spec.handle if spec else self.model_handle}"
                            + (f" (content {spec.fingerprint})" if spec and spec.fingerprint else ""))
        if self.settings.resize != rec.get("resize"):
            problems.append(f"resize policy {self.settings.resize!r}")
        if self.settings.precision != rec.get("precision", "fp32"):
            problems.append(f"precision {self.settings.precision}")
        if spec is not None and (spec.dim != rec["dim"] or list(spec.input_size) != rec["input_size"]):
            problems.append(f"a model of {spec.dim} dimensions at {spec.input_size[0]}x{spec.input_size[1]}")
        if problems:
            raise ModelMismatchError(
                f"store {self.root} was built with model {rec['model']} "
                f"({'content ' + rec['fingerprint'] + ', ' if rec.get('fingerprint') else ''}{rec['dim']} "
                f"dimensions, input {rec['input_size'][0]}x{rec['input_size'][1]}, resize {rec.get('resize')!r}, "
                f"precision {rec.get('precision', 'fp32')}), but this run uses {', '.join(problems)}. Vectors of "
                f"different models cannot be mixed: use the store's model, or another --store."
            )

    def _record_fingerprint(self, spec: ModelSpec | None = None) -> None:
        """Stores made before models were identified by content learn their module's fingerprint on the
        first open where its files are here (or once the model is loaded)."""
        rec = self._recorded
        if not rec or rec.get("fingerprint") or isinstance(self._model_arg, Embedder):
            return
        fp = spec.fingerprint if spec is not None else local_fingerprint(rec["model"])
        if fp is None:
            return
        rec = {**rec, "fingerprint": fp}
        try:
            self.catalog.set_meta(model=rec)
        except StoreError as exc:  # a read-only or busy catalog: the store works as before, and learns later
            log.warning("could not record the model's fingerprint in %s: %s", self.root, exc)
            return
        self._recorded = rec

    @property
    def embedder(self) -> Embedder:
        """Loaded on first use: stats, failures and queries by id or vector need no model."""
        with self._model_lock:  # two server threads must not load it twice
            return self._load_embedder()

    def _load_embedder(self) -> Embedder:
        if self._embedder is None:
            t = time.perf_counter()
            arg = self._model_arg
            s, rec = self.settings, self._recorded or {}
            if isinstance(arg, Embedder):
                if s.precision == "int8":
                    raise SimsearchError("precision int8 quantizes the model from its handle: open the store "
                                         "with a model URL or folder, not an Embedder object")
                emb = arg
            elif s.precision == "int8" and rec:
                emb = open_int8(self.root / INT8_DIR, self.model_handle, sha256=rec.get("int8_sha256", ""),
                                batch_size=s.batch_size)
            else:  # fp32, or a new int8 store's starting point (see _record_provenance)
                emb = load_embedder(self.model_handle, runtime=s.runtime, fingerprint=rec.get("fingerprint"),
                                    batch_size=s.batch_size)
            self._check_provenance(emb.spec)
            self._record_fingerprint(emb.spec)
            self._embedder = emb
            if emb is not arg:  # loaded from a handle now, not handed in ready
                self.model_load_seconds = time.perf_counter() - t
        return self._embedder

    @property
    def _input_size(self) -> tuple[int, int]:
        """Known from the store without loading the model, so an unchanged folder re-indexes in seconds."""
        if self._recorded:
            h, w = self._recorded["input_size"]
            return int(h), int(w)
        return self.embedder.spec.input_size

    def _record_provenance(self, folder: Path | None = None) -> None:
        """A new store's first write: load the model (int8: quantize it on the folder) and record it."""
        if self._recorded:
            return
        extra: dict[str, Any] = {}
        if self.settings.precision == "int8":
            if folder is None:
                raise SimsearchError("an int8 store is created by indexing a folder: its photos calibrate the model")
            extra["int8_sha256"] = self._quantize(folder)
        spec = self.embedder.spec
        rec = {**spec.as_meta(), **extra, "resize": self.settings.resize, "preprocessing":
               f"RGB float32 in [0,1]; EXIF-oriented; alpha on white; resize={self.settings.resize}, bilinear"}
        self.catalog.set_meta(model=rec)
        self._recorded = rec
        self._index = self._new_index(spec.dim)

    def _quantize(self, folder: Path) -> str:
        """A new int8 store: quantize the compiled fp32 model on photos spread over the folder; the
        store's embedder becomes the int8 one. Returns the int8 model's sha256."""
        compiled = getattr(self.embedder, "compiled", None)
        if compiled is None:
            raise SimsearchError("precision int8 needs the compiled model, but it runs on TensorFlow here "
                                 "(see the warning above, or drop --runtime tensorflow)")
        files = sorted(find_images(folder))
        step = max(1, len(files) // CALIBRATION_PHOTOS)
        photos = []
        for path in files[::step][:CALIBRATION_PHOTOS]:
            try:
                photos.append(load_image(path, self._input_size, policy=self.settings.resize,
                                         max_pixels=self.settings.max_pixels)[0])
            except ImageError:
                continue  # recorded as a failure when it is indexed
        log.info("quantizing the model to int8 on %d photos of %s (once for this store) ...", len(photos), folder)
        model = quantize_int8(compiled, np.stack(photos) if photos else np.zeros((0, 1, 1, 3), np.uint8),
                              self.root / INT8_DIR)
        with self._model_lock:
            self._embedder = open_int8(self.root / INT8_DIR, self.model_handle, sha256=model.meta["sha256"],
                                       batch_size=self.settings.batch_size)
        return str(model.meta["sha256"])

    # vector index -----------------------------------------------------------------------------
    def _index_settings(self) -> dict[str, Any]:
        """The store's index kind (and, for IVF, nlist, nprobe, recall_at_10), as optimize recorded it."""
        return self.catalog.get_meta("index") or {"kind": "flat"}

    def _new_index(self, dim: int) -> VectorIndex:
        """An empty index of the store's kind: flat, or the trained IVF template."""
        settings = self._index_settings()
        template = self.root / TEMPLATE_FILE
        if settings["kind"] == "flat" or not template.exists():
            return VectorIndex(dim)
        index = VectorIndex.load(template, dim)
        index.nprobe = int(settings["nprobe"])
        return index

    def _open_index(self, dim: int) -> None:
        """Load the FAISS checkpoint if it matches the catalog exactly, else rebuild it from the catalog."""
        path, state_path = self.root / INDEX_FILE, self.root / INDEX_STATE_FILE
        version = int(self.catalog.get_meta("vectors_version") or 0)
        self._version = version
        reason = "no index file"
        if path.exists() and state_path.exists():
            try:
                state = json.loads(state_path.read_text())
                index = VectorIndex.load(path, dim)
            except (ValueError, OSError, StoreError) as exc:
                reason = f"unreadable index file ({exc})"
            else:
                ids = self.catalog.vector_ids()
                settings = self._index_settings()
                kind = settings["kind"]
                if index.kind != kind:
                    reason = f"index file is {index.kind}, the store uses {kind}"
                elif state.get("version") != version:
                    reason = f"index file is at version {state.get('version')}, catalog at {version}"
                elif len(index) != len(ids) or not np.array_equal(np.sort(index.ids()), np.sort(ids)):
                    reason = f"index file holds {len(index)} vectors, catalog {len(ids)}"
                else:
                    if index.kind != "flat":
                        index.nprobe = int(settings["nprobe"])
                    self._index = index
                    return
        index = self._new_index(dim)
        for ids, vecs in self.catalog.iter_vectors(dim):
            index.add(ids, vecs)
        self._index = index
        if len(index) or path.exists():
            log.info("rebuilt vector index of %s from the catalog: %s", self.root, reason)
            self.rebuilt_index = True
            with self._writer_lock() as free:
                if free:  # else a writer is at work and will checkpoint it itself
                    self._save_index()

    def _save_index(self) -> None:
        if self._index is None:
            return
        with self._lock:
            self._index.save(self.root / INDEX_FILE)
            atomic_write(self.root / INDEX_STATE_FILE,
                         json.dumps({"version": self._version, "count": len(self._index)}).encode())

    @property
    def vectors(self) -> VectorIndex:
        if self._index is None:
            raise EmptyStoreError(f"store {self.root} is empty: run `simsearch index FOLDER` first")
        return self._index

    def _apply(self, changes: Changes) -> None:
        """One transaction in the catalog, then the same change in memory."""
        if not len(changes):
            return
        with self._lock:
            written = self.catalog.write(changes)
            self.vectors.remove(written.removed_ids)
            if len(written.added_ids):
                self.vectors.add(written.added_ids, written.added_vectors)
            self._version = written.version

    @contextmanager
    def _writer_lock(self) -> Iterator[bool]:
        """Try the store's advisory write lock (released when the process dies); yields whether it was got."""
        with (self.root / LOCK_FILE).open("a+") as f:
            if fcntl is None:
                yield True
                return
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True

    @contextmanager
    def _writer(self) -> Iterator[None]:
        """One writer per store: two indexers would race on the FAISS file."""
        with self._writer_lock() as got:
            if not got:
                raise StoreError(f"store {self.root} is being updated by another simsearch process; "
                                 f"try again when it has finished")
            try:
                yield
            finally:
                self._save_index()

    # indexing ---------------------------------------------------------------------------------
    def index(self, folder: str | os.PathLike[str], *, progress: Callable[[Progress], None] | None = None,
              ray: RayOptions | None = None) -> IndexReport:
        """Bring the store up to date with a folder: embed new and changed photos, follow moves, drop deleted.

        With `ray`, files are decoded and embedded on a Ray cluster (see simsearch.distributed) and merged
        here as they come back, with the same result as a run in this process.
        """
        t0 = time.perf_counter()
        loaded_before = self._embedder is not None
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise NotFoundError(f"folder {root} does not exist or is not a folder")
        root = root.resolve()
        with self._writer():
            self._record_provenance(root)  # a new store loads its model here, before any scanning
            folders = set(self.catalog.get_meta("folders") or [])
            if str(root) not in folders:
                self.catalog.set_meta(folders=sorted(folders | {str(root)}))
            report = self._index_folder(root, progress, t0, loaded_before, ray)
        if self.vectors.kind == "flat" and len(self.vectors) >= self.settings.ann_threshold:
            log.info("%d vectors: moving %s to an approximate index", len(self.vectors), self.root)
            self.optimize()
        return report

    def _index_folder(self, root: Path, progress: Callable[[Progress], None] | None, t0: float,
                      loaded_before: bool, ray: RayOptions | None) -> IndexReport:
        s = self.settings
        entries = self.catalog.entries_under(str(root))
        tasks: list[_Task] = []
        early = Changes()
        seen: set[str] = set()
        unchanged = 0
        for path in find_images(root):
            p = str(path)
            seen.add(p)
            old = entries.get(p)
            try:
                st = os.stat(path)
            except OSError as exc:
                early.upserts.append((ImageFields(p, None, None, None, error=f"cannot read file: {exc.strerror or exc}"), None))
                continue
            if old is not None and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns:
                unchanged += 1
            else:
                tasks.append(_Task(p, st.st_size, st.st_mtime_ns, old))
        missing = {p: e for p, e in entries.items() if p not in seen}
        movable = {e.sha256: e for e in missing.values() if e.status == OK and e.sha256}
        known = self.catalog.ok_hashes()
        timings = {"scan": time.perf_counter() - t0, "decode": 0.0, "embed": 0.0, "write": 0.0}
        counts = {"added": 0, "updated": 0, "moved": 0, "failed": len(early.upserts)}
        self._apply(early)

        total, done = len(tasks), 0
        if progress:
            progress(Progress(0, total, counts["failed"], time.perf_counter() - t0))
        pending, batch = Changes(), []

        def flush() -> None:
            nonlocal done, pending, batch
            todo = [b.pixels for b in batch if b.vector is None]
            if todo:
                embedder = self.embedder  # loads the model on first use, timed apart as model_load
                t = time.perf_counter()
                embedded = iter(embedder.embed(np.stack(todo)))
                timings["embed"] += time.perf_counter() - t
            for b in batch:
                pending.upserts.append((self._fields(b), b.vector if b.vector is not None else next(embedded)))
            t = time.perf_counter()
            self._apply(pending)
            timings["write"] += time.perf_counter() - t
            done += len(pending.upserts) + len(pending.moves) + len(pending.touches)
            pending, batch = Changes(), []
            if time.perf_counter() - last_save[0] > s.save_every_s:
                self._save_index()
                last_save[0] = time.perf_counter()
            if progress:
                progress(Progress(done, total, counts["failed"], time.perf_counter() - t0))

        last_save = [time.perf_counter()]
        run = self._ray_run(ray) if ray is not None and tasks else None
        ray_stats: dict[str, float] = {}
        items = self._prepared(tasks, movable, known) if run is None else self._from_ray(run, tasks, movable, known)
        for item in items:
            timings["decode"] += item.seconds
            task = item.task
            if item.kind == "embed":
                batch.append(item)
                counts[_new_or_updated(task)] += 1
            elif item.kind == "failed":
                pending.upserts.append((ImageFields(task.path, task.size, task.mtime_ns, item.sha256, error=item.error), None))
                counts["failed"] += 1
            elif item.kind == "touch":
                unchanged += 1
                pending.touches.append((task.old.id, task.size, task.mtime_ns))  # type: ignore[union-attr]
            elif item.kind == "move" and item.sha256 in movable:
                src = movable.pop(item.sha256)
                missing.pop(src.path, None)
                pending.moves.append((src.id, task.path, task.size, task.mtime_ns))
                counts["moved"] += 1
            else:  # content already indexed under another path: reuse its vector
                if self._copy(item, known[item.sha256], pending):
                    counts[_new_or_updated(task)] += 1
                elif item.vector is not None:  # embedded on Ray already
                    batch.append(replace(item, kind="embed"))
                    counts[_new_or_updated(task)] += 1
                else:
                    try:
                        batch.append(self._decode_now(item))
                        counts[_new_or_updated(task)] += 1
                    except ImageError as exc:
                        pending.upserts.append((ImageFields(task.path, task.size, task.mtime_ns, item.sha256,
                                                            error=exc.reason), None))
                        counts["failed"] += 1
            if len(batch) >= s.batch_size or len(pending) >= 4 * s.batch_size:
                flush()
        flush()

        if run is not None:
            timings.update(decode=run.stats["decode"], embed=run.stats["embed"], ray=run.stats["ray_seconds"])
            ray_stats = {k: run.stats[k] for k in ("shards", "reused_shards")}
            self._save_index()
            run.clean_up()  # every row is committed: the shards have served
        gone = [e.id for e in missing.values()]
        for i in range(0, len(gone), 1000):
            self._apply(Changes(deletes=gone[i : i + 1000]))
        return IndexReport(
            folder=str(root), scanned=len(seen), added=counts["added"], updated=counts["updated"],
            moved=counts["moved"], removed=len(gone), unchanged=unchanged,
            failed=counts["failed"], seconds=time.perf_counter() - t0,
            timings={k: round(v, 3) for k, v in timings.items()}
            | ({"model_load": round(self.model_load_seconds, 3)} if not loaded_before and self.model_load_seconds else {}),
            ray=ray_stats,
        )

    def _copy(self, item: _Prepared, src_id: int, pending: Changes) -> bool:
        """Queue a row that reuses src_id's vector; False if that row no longer holds this content."""
        rec = self.catalog.records([src_id]).get(src_id)
        vec = self.catalog.vector(src_id, self.vectors.dim)
        if rec is None or vec is None or rec["sha256"] != item.sha256:
            return False  # the source was re-embedded or removed earlier in this run
        task, taken = item.task, rec["taken_at"]
        fields = ImageFields(task.path, task.size, task.mtime_ns, item.sha256, rec["width"], rec["height"],
                             rec["format"], datetime.fromisoformat(taken) if taken else None)
        pending.upserts.append((fields, vec))
        return True

    def _decode_now(self, item: _Prepared) -> _Prepared:
        """Rare fallback on the writer's thread for a copy whose source changed under us."""
        s = self.settings
        pixels, info = load_image(item.task.path, self._input_size, policy=s.resize,
                                  max_pixels=s.max_pixels)
        return _Prepared(item.task, "embed", item.sha256, pixels, info)

    @staticmethod
    def _fields(item: _Prepared) -> ImageFields:
        info, task = item.info, item.task
        assert info is not None
        return ImageFields(task.path, task.size, task.mtime_ns, item.sha256, info.width, info.height,
                           info.format, info.taken_at)

    def _prepared(self, tasks: list[_Task], movable: dict[str, Entry], known: dict[str, int]) -> Iterator[_Prepared]:
        """Read, hash and decode on a small thread pool, in order, at most a few batches ahead (bounded memory)."""
        s = self.settings
        size = self._input_size
        movable_hashes = frozenset(movable)

        def prepare(task: _Task) -> _Prepared:
            t = time.perf_counter()
            try:
                data = read_file(task.path)
            except ImageError as exc:
                return _Prepared(task, "failed", error=exc.reason, seconds=time.perf_counter() - t)
            sha = hashlib.sha256(data).hexdigest()
            kind = _classify(task, sha, movable_hashes, known)
            if kind == "embed":
                try:
                    pixels, info = load_image(data, size, policy=s.resize, max_pixels=s.max_pixels)
                except ImageError as exc:
                    return _Prepared(task, "failed", sha, error=exc.reason, seconds=time.perf_counter() - t)
                return _Prepared(task, "embed", sha, pixels, info, seconds=time.perf_counter() - t)
            return _Prepared(task, kind, sha, seconds=time.perf_counter() - t)

        ahead = 2 * s.batch_size + 2 * s.workers
        with ThreadPoolExecutor(s.workers, thread_name_prefix="simsearch-decode") as pool:
            window: deque[Future[_Prepared]] = deque()
            it = iter(tasks)
            try:
                while True:
                    while len(window) < ahead:
                        task = next(it, None)
                        if task is None:
                            break
                        window.append(pool.submit(prepare, task))
                    if not window:
                        return
                    yield window.popleft().result()
            finally:
                for fut in window:
                    fut.cancel()

    def _ray_run(self, options: RayOptions) -> RayRun:
        if self.settings.precision == "int8":
            raise SimsearchError("indexing on Ray runs the fp32 model on every worker; an int8 store is "
                                 "indexed on one machine")
        if isinstance(self._model_arg, Embedder):
            raise SimsearchError("indexing on Ray loads the model by its handle on every worker: "
                                 "open the store with a model URL or folder, not an Embedder object")
        rec = self._recorded
        assert rec is not None  # _record_provenance ran
        s = self.settings
        return RayRun(options, staging=options.staging or str(self.root / STAGING_DIR), model=self.model_handle,
                      dim=int(rec["dim"]), input_size=self._input_size, resize=s.resize or DEFAULT_RESIZE,
                      max_pixels=s.max_pixels, batch_size=s.batch_size, runtime=s.runtime or DEFAULT_RUNTIME,
                      fingerprint=rec.get("fingerprint"))

    @staticmethod
    def _from_ray(run: RayRun, tasks: list[_Task], movable: dict[str, Entry], known: dict[str, int]) -> Iterator[_Prepared]:
        """The Ray pipeline's rows as the items the local pipeline would have made, in the same order."""
        movable_hashes = frozenset(movable)
        for task, row in zip(tasks, run.results([(t.path, t.size, t.mtime_ns) for t in tasks])):
            kind = "failed" if row.sha256 is None else _classify(task, row.sha256, movable_hashes, known)
            if kind in ("embed", "failed") and row.error is not None:  # as locally: a touch or move needs no decode
                yield _Prepared(task, "failed", row.sha256, error=row.error)
            else:
                yield _Prepared(task, kind, row.sha256, info=row.info, vector=row.vector)

    # other writes -----------------------------------------------------------------------------
    def remove(self, paths: Iterable[str | os.PathLike[str]]) -> int:
        """Forget files (or everything under folders) without touching them on disk; returns how many."""
        resolved = [str(Path(p).expanduser().resolve()) for p in paths]
        unknown = [p for p in resolved if not self.catalog.ids_for_paths([p])]
        if unknown:
            raise NotFoundError(f"not in the store: {', '.join(unknown)}")
        ids = self.catalog.ids_for_paths(resolved)
        with self._writer():
            for i in range(0, len(ids), 1000):
                self._apply(Changes(deletes=ids[i : i + 1000]))
        return len(ids)

    # reading ----------------------------------------------------------------------------------
    def query_vector(self, probe: Any) -> np.ndarray:
        """The unit query vector for any kind of probe."""
        dim = self.vectors.dim
        if isinstance(probe, (bool, np.bool_)):
            raise QueryError(f"cannot query by {probe!r}")
        if isinstance(probe, (int, np.integer)):
            vec = self.catalog.vector(int(probe), dim)
            if vec is None:
                raise NotFoundError(f"no indexed image with id {int(probe)}")
            return vec
        if isinstance(probe, np.ndarray) and probe.ndim == 1:
            if probe.shape[0] != dim or not np.all(np.isfinite(probe)):
                raise QueryError(f"query vector must be {dim} finite floats, got shape {list(probe.shape)}")
            return l2_normalize(probe[None].astype(np.float32))[0]
        if isinstance(probe, np.ndarray):
            probe = array_to_image(probe)
        elif isinstance(probe, (str, os.PathLike)):
            path = Path(probe).expanduser()
            entry = self.catalog.id_for_path(str(path.resolve()))
            if entry is not None and entry.status == OK:
                try:
                    st = path.stat()
                except OSError:
                    st = None
                if st is not None and (st.st_size, st.st_mtime_ns) == (entry.size, entry.mtime_ns):
                    vec = self.catalog.vector(entry.id, dim)
                    if vec is not None:
                        return vec
        elif not isinstance(probe, (bytes, bytearray, memoryview, Image.Image)):
            raise QueryError(f"cannot query by a {type(probe).__name__}: give a path, bytes, a PIL image, "
                             f"an array, an indexed id or a vector")
        # decoded before the model loads (the store knows its input size): a bad probe fails at once
        pixels, _ = load_image(probe, self._input_size, policy=self.settings.resize,
                               max_pixels=self.settings.max_pixels)
        return self.embedder.embed(pixels[None])[0]

    def query(self, probe: Any, k: int = 10, *, where: ImageFilter | None = None) -> list[Hit]:
        """Nearest neighbours of a path, bytes, PIL image, array, indexed id or vector, best first.

        where: only photos passing this filter; the k returned are the true top k among them."""
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        if where and where.folder:
            where = replace(where, folder=str(Path(where.folder).expanduser().resolve()))
        vec = self.query_vector(probe)  # decoding and the model run outside the lock
        with self._lock:
            among = self.catalog.ids_matching(where) if where else None
            if among is not None and self.vectors.kind != "flat" and len(among) <= EXACT_FILTER_LIMIT:
                scores, ids = (x[None] for x in rescore(vec, among, self._exact_vectors, k))  # selective: exact
            else:
                scores, ids = self.vectors.search(vec[None], k, among=among, exact=self._exact_vectors)
            found = [(int(i), float(sc)) for i, sc in zip(ids[0], scores[0]) if i >= 0]
            records = self.catalog.records(i for i, _ in found)
        hits = []
        for i, score in found:
            r = records.get(i)
            if r is None:  # removed by another process since this one loaded the index
                continue
            hits.append(Hit(id=i, path=r["path"], score=score, size=r["size"], width=r["width"],
                            height=r["height"], format=r["format"], taken_at=r["taken_at"],
                            mtime=r["mtime"], sha256=r["sha256"]))
        return hits

    def duplicates(self, threshold: float = DEFAULT_DUPLICATE_THRESHOLD, *, chunk: int = 1024) -> list[DuplicateGroup]:
        """Groups of exact copies (same content hash) and near-duplicates (cosine >= threshold, linked
        transitively), largest groups first. Range searches in chunks, so memory follows the number of
        close pairs, never N x N."""
        if not 0 < threshold <= 1:
            raise QueryError(f"threshold must be in (0, 1], got {threshold}")
        parent: dict[int, int] = {}

        def root(i: int) -> int:
            parent.setdefault(i, i)
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        pairs: list[tuple[int, float]] = []  # (one end, score) of every close pair, for each group's weakest link
        for group in self.catalog.same_content():
            for other in group[1:]:
                parent[root(other)] = root(group[0])
        vectors = self.vectors
        for ids, vecs in self.catalog.iter_vectors(vectors.dim, chunk=chunk):
            with self._lock:
                a, b, scores = vectors.pairs_within(ids, vecs, threshold)
            for i, j, sc in zip(a.tolist(), b.tolist(), scores.tolist()):
                parent[root(j)] = root(i)
                pairs.append((i, sc))
        members: dict[int, list[int]] = {}
        for i in list(parent):
            members.setdefault(root(i), []).append(i)
        weakest: dict[int, float] = {}
        for i, sc in pairs:
            r = root(i)
            weakest[r] = min(weakest.get(r, 1.0), sc)
        groups = []
        for r, ids in ((r, sorted(m)) for r, m in members.items() if len(m) > 1):
            recs = self.catalog.records(ids)
            rows = [recs[i] for i in ids if i in recs]
            if len(rows) < 2:
                continue
            exact = len({r["sha256"] for r in rows}) == 1
            keep = min(rows, key=lambda r: (-(r["width"] or 0) * (r["height"] or 0), r["taken_at"] or "9999",
                                            r["mtime"] or float("inf"), r["path"]))
            groups.append(DuplicateGroup(
                kind="exact" if exact else "near", keep=keep["path"],
                min_score=1.0 if exact else round(weakest.get(r, 1.0), 6),
                members=[{k: r[k] for k in ("id", "path", "size", "width", "height", "taken_at", "mtime", "sha256")}
                         for r in rows]))
        return sorted(groups, key=lambda g: (-len(g.members), g.keep))

    def _exact_vectors(self, ids: np.ndarray) -> np.ndarray:
        """Full-precision vectors from the catalog, for re-scoring an approximate index's candidates."""
        return self.catalog.vectors_for(ids, self.vectors.dim)

    def optimize(self, *, target_recall: float = 0.95, nlist: int | None = None, seed: int = 0) -> dict[str, Any]:
        """Move to an IVF-SQ8 index trained on a sample of the stored vectors, with nprobe tuned so that
        recall@10 against exact search reaches target_recall on the store's own vectors."""
        t0 = time.perf_counter()
        dim = self.vectors.dim
        all_ids = self.catalog.vector_ids()
        n = len(all_ids)
        nlist = nlist or int(min(max(16, 2 * np.sqrt(n)), 65536, n // 39))  # ~2000 lists at 1M: k-means in a minute
        if nlist < 16:
            raise StoreError(f"{n} vectors are too few for an approximate index; exact search is fast at this size")
        rng = np.random.default_rng(seed)
        sample_ids = np.sort(rng.choice(all_ids, min(n, max(64 * nlist, 50_000)), replace=False))
        with self._writer():
            index = VectorIndex.trained_ivf(dim, self.catalog.vectors_for(sample_ids, dim), nlist)
            template = index.empty_like()
            for ids, vecs in self.catalog.iter_vectors(dim):
                index.add(ids, vecs)
            query_ids = rng.choice(all_ids, min(n, 500), replace=False)
            queries = self.catalog.vectors_for(query_ids, dim)
            truth = without_self(_exact_top_k(self.catalog, queries, 11, dim), query_ids, 10)
            nprobe, recall = tune_nprobe(index, queries, query_ids, truth, target_recall, exact=self._exact_vectors)
            template.nprobe = nprobe
            with self._lock:
                template.save(self.root / TEMPLATE_FILE)
                settings = {"kind": index.kind, "nlist": nlist, "nprobe": nprobe, "recall_at_10": round(recall, 4)}
                self.catalog.set_meta(index=settings)
                self._index = index
        return {**settings, "vectors": n, "seconds": round(time.perf_counter() - t0, 2)}

    def ann_recall(self, k: int = 10, queries: int = 200, seed: int = 0) -> float:
        """recall@k of the current index, as queries run it (re-scoring included), against exact search;
        stored vectors are the queries, their own ids left out."""
        dim = self.vectors.dim
        all_ids = self.catalog.vector_ids()
        if len(all_ids) <= k:
            return 1.0
        query_ids = np.random.default_rng(seed).choice(all_ids, min(len(all_ids), queries), replace=False)
        vecs = self.catalog.vectors_for(query_ids, dim)
        truth = without_self(_exact_top_k(self.catalog, vecs, k + 1, dim), query_ids, k)
        with self._lock:
            found = self.vectors.search(vecs, k + 1, exact=self._exact_vectors)[1]
        return recall_at_k(without_self(found, query_ids, k), truth)

    def get(self, image_id: int) -> dict[str, Any]:
        rec = self.catalog.records([image_id]).get(image_id)
        if rec is None:
            raise NotFoundError(f"no image with id {image_id}")
        return rec

    def stats(self) -> dict[str, Any]:
        counts = self.catalog.counts()
        rec = self._recorded or {}
        index_file = self.root / INDEX_FILE
        return {
            "store": str(self.root),
            "db": self.catalog.url,
            "model": rec.get("model", self.model_handle),
            "fingerprint": rec.get("fingerprint"),
            "precision": rec.get("precision", self.settings.precision),
            "runtime": self.settings.runtime,
            "dim": rec.get("dim"),
            "input_size": rec.get("input_size"),
            "resize": self.settings.resize,
            "images": counts["images"],
            "failed": counts["failed"],
            "vectors": len(self._index) if self._index is not None else 0,
            "folders": self.catalog.get_meta("folders") or [],
            "last_indexed_at": counts["last_indexed_at"],
            "index_bytes": index_file.stat().st_size if index_file.exists() else 0,
            "index_kind": self._index.kind if self._index is not None else "flat",
            **{k: v for k, v in self._index_settings().items() if k in ("nlist", "nprobe", "recall_at_10")},
        }

    def failures(self) -> list[Failure]:
        return [Failure(**f) for f in self.catalog.failures()]

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["open", "Store", "Hit", "IndexReport", "Progress", "Failure", "SimsearchError"]


def _exact_top_k(catalog: Catalog, queries: np.ndarray, k: int, dim: int) -> np.ndarray:
    """Exact top-k ids for a few queries, streaming the catalog's vectors (no second copy in memory)."""
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    for ids, vecs in catalog.iter_vectors(dim):
        scores = np.concatenate([best_scores, queries @ vecs.T], axis=1)
        cand = np.concatenate([best_ids, np.broadcast_to(ids, (len(queries), len(ids)))], axis=1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, top, 1), np.take_along_axis(cand, top, 1)
    return best_ids
