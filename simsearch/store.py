"""The Store: one folder with a catalog, a vector index and the model that built them.

A facade: it opens the parts and delegates. Where each rule lives:
- simsearch.provenance: which model a store belongs to, loading it on first use;
- simsearch.collection: catalog and FAISS kept in step (the crash-safety rule), search, the IVF index;
- simsearch.indexing: one indexing run (scan, batches, moves, copies, deletions);
- simsearch.prepare / simsearch.distributed: where files are read and decoded (threads here, or Ray);
- simsearch.duplicates: duplicate groups.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from .catalog import OK, BrowseKey, Catalog, Changes, ImageFilter
from .collection import INDEX_FILE, INDEX_STATE_FILE, LOCK_FILE, Collection
from .config import Settings, default_store_dir, user_default
from .distributed import RayOptions, check_reachable
from .duplicates import (DEFAULT_MIN_COSINE, DEFAULT_NEIGHBOURS, find_duplicates, resolve_group, resolve_sure,
                         split_group, undo_decision)
from .embedding import Embedder, l2_normalize
from .files import open_verified
from .formats import ScanOptions
from .check import check_store
from .classifier import Classifier, StoreLabels
from .labels import DEFAULT_MIN_PROBABILITY, Label, Vocabulary
from .errors import NotFoundError, QueryError, SimsearchError, StoreError
from .images import array_to_image
from .indexing import IndexRun
from .prepare import LocalSource, Source
from .probes import fetch_url, is_url
from .provenance import StoreModel
from .results import (
    CheckReport,
    DuplicateGroup,
    Failure,
    Hit,
    IndexReport,
    Member,
    OptimizeReport,
    Photo,
    Progress,
    StoreStats,
    Undone,
)

log = logging.getLogger(__name__)

CATALOG_FILE = "catalog.sqlite"
STAGING_DIR = "staging"  # default home of the Parquet shards of an index run on Ray
NEGATIVE_WEIGHT = 0.25  # Rocchio's weight of the negative examples (Store.examples_vector)


class Store:
    """A folder with a catalog and a vector index, built with one model.

    store: the folder (default: $SIMSEARCH_STORE, else the per-user data folder). model: a TF-Hub handle
    (URL or module folder) or an Embedder; by default $SIMSEARCH_MODEL, else the model the store was
    built with, else the Inception V2 module. db: a SQLAlchemy URL or Engine; by default SQLite in the
    store folder. create: make the store if there is none; without it a missing store (a typo) is a
    NotFoundError rather than a new empty store.
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | None = None,
        *,
        model: str | os.PathLike[str] | Embedder | None = None,
        db: Any = None,
        settings: Settings | None = None,
        create: bool = False,
        classifier: str | os.PathLike[str] | Classifier | None = None,
    ) -> None:
        db = db if db is not None else user_default("db")
        folder = Path(store).expanduser() if store is not None else default_store_dir()
        # what this open made, so that a first run that fails before anything is written leaves no store behind
        self._made = (not folder.exists(), db is None and not (folder / CATALOG_FILE).exists())
        if db is not None and not create:
            Catalog.require(db)  # before the folder is made: a mistyped --db makes nothing
        self.root = _store_folder(folder, create=create, has_db=db is not None)
        # a store that already has an index file, or is opened to read, cannot have a new catalog
        self.catalog = Catalog(db if db is not None else f"sqlite:///{self.root / CATALOG_FILE}",
                               new=create and not (self.root / INDEX_STATE_FILE).exists())
        try:
            self.model = StoreModel(self.root, self.catalog, model, settings or Settings())
        except SimsearchError:
            self.catalog.close()
            raise
        self.labels = StoreLabels(self.root, self.catalog, classifier, self.model.settings)
        self.collection = Collection(self.root, self.catalog)
        if self.model.recorded:
            self.collection.open(self.model.dim, lazy=True)

    @property
    def settings(self) -> Settings:
        return self.model.settings

    @property
    def embedder(self) -> Embedder:
        """Loaded on first use: stats, failures and queries by id or vector need no model."""
        return self.model.embedder

    @property
    def rebuilt_index(self) -> bool:
        return self.collection.rebuilt

    # writing ----------------------------------------------------------------------------------
    def index(self, folder: str | os.PathLike[str], *, progress: Callable[[Progress], None] | None = None,
              ray: RayOptions | None = None, exclude: Sequence[str] | None = None,
              include_hidden: bool | None = None, labels: bool = False) -> IndexReport:
        """Bring the store up to date with a folder: embed new and changed photos, follow moves, drop deleted.

        exclude (globs on names or paths relative to the folder) and include_hidden are remembered for the
        folder: None keeps what an earlier run chose (by default, junk and hidden files are left out).
        With `ray`, files are decoded and embedded on a Ray cluster (see simsearch.distributed) and merged
        here as they come back, with the same result as a run in this process.
        labels: keep ImageNet labels from now on (remembered; simsearch.classifier): each photo embedded is
        classified on the same pixels, and photos indexed before are labelled without being embedded again.
        """
        t0 = time.perf_counter()
        loaded_before = self.model.loaded
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise NotFoundError(f"folder {root} does not exist or is not a folder")
        root = root.resolve()
        try:
            if ray is not None:
                check_reachable(ray.address)  # at once, not after Ray's minutes of retrying
            with self.collection.writer():
                self._sync()
                self._begin(root)  # a new store loads its model here, before any scanning
                options = self._remember_folder(root, exclude, include_hidden)
                if labels:
                    self.labels.enable()
                run = IndexRun(self.collection, self.model, self.settings, root, options, progress=progress,
                               started=t0, labels=self.labels)
                report = run.run(self._source(ray))
                if self.labels.enabled:  # what the run could not classify: moved in from Ray, older photos
                    t = time.perf_counter()
                    filled = self.labels.fill(self.model.decoding, workers=self.settings.workers, progress=progress)
                    report = replace(report, labelled=run.labelled + filled, timings=report.timings | (
                        {"labels_fill": round(time.perf_counter() - t, 3)} if filled else {}))
        except SimsearchError:
            self._discard_if_unused()  # only a new store whose model could not be recorded
            raise
        if not loaded_before and self.model.load_seconds:
            report = replace(report, timings=report.timings | {"model_load": round(self.model.load_seconds, 3)})
        index = self.collection.loaded  # None: the run changed nothing, so there is nothing to move
        if index is not None and index.kind == "flat" and len(index) >= self.settings.ann_threshold:
            log.info("%d vectors: moving %s to an approximate index", len(index), self.root)
            self.collection.optimize()
        return report

    def update(self, *, progress: Callable[[Progress], None] | None = None,
               ray: RayOptions | None = None, labels: bool = False) -> list[IndexReport]:
        """Bring every folder of the store up to date, each with the choices remembered for it (labels: as
        for index)."""
        folders = self.folders()
        if not folders:
            raise NotFoundError(f"store {self.root} has no folders yet: index one with `simsearch index FOLDER`")
        reports = []
        for folder in folders:
            if not Path(folder).is_dir():  # an unmounted disk: its photos stay in the store until it is back
                log.warning("folder %s is missing: skipped, nothing removed from the store", folder)
                continue
            reports.append(self.index(folder, progress=progress, ray=ray, labels=labels))
        return reports

    def folders(self) -> list[str]:
        return list(self.catalog.get_meta("folders") or [])

    def photo_folders(self, limit: int = 5000) -> tuple[list[str], bool]:
        """The indexed folders and every folder under them that holds photos (at most limit), and whether
        some were left out: what a folder filter can offer."""
        found, more = self.catalog.photo_folders(limit)
        return sorted(set(found) | set(self.folders())), more

    def scan_options(self, folder: str) -> ScanOptions:
        """What scans of this folder leave out (as its last `index` chose)."""
        return ScanOptions.from_meta((self.catalog.get_meta("folder_options") or {}).get(folder))

    def _remember_folder(self, root: Path, exclude: Sequence[str] | None, include_hidden: bool | None) -> ScanOptions:
        folders, key = set(self.folders()), str(root)
        stored = self.catalog.get_meta("folder_options") or {}
        old = ScanOptions.from_meta(stored[key]) if key in stored else ScanOptions(
            tuple(user_default("exclude") or ()), bool(user_default("include_hidden")))  # config: new folders
        options = ScanOptions(tuple(exclude) if exclude is not None else old.exclude,
                              old.include_hidden if include_hidden is None else include_hidden)
        if key not in folders or key not in stored or options != old:
            self.catalog.set_meta(folders=sorted(folders | {key}), folder_options={**stored, key: options.to_meta()})
        return options

    def _sync(self) -> None:
        """See what other processes committed since this one opened the store: a separate `simsearch index`
        beside a running server, or its watcher."""
        self.model.refresh()
        if self.model.recorded:
            self.collection.refresh(self.model.dim)

    def _discard_if_unused(self) -> None:
        """A new store whose model could not even be recorded holds nothing: remove the files this open made."""
        made_folder, made_catalog = self._made
        if self.model.recorded or not made_catalog:
            return
        self.catalog.close()
        for name in (CATALOG_FILE, CATALOG_FILE + "-wal", CATALOG_FILE + "-shm", CATALOG_FILE + "-journal", LOCK_FILE):
            (self.root / name).unlink(missing_ok=True)
        if made_folder:
            try:
                self.root.rmdir()
            except OSError:  # something else is in it now: leave it
                pass

    def _begin(self, folder: Path | None = None) -> None:
        if self.model.record(folder):
            self.collection.create(self.model.dim)

    def _source(self, ray: RayOptions | None) -> Source:
        s = self.settings
        if ray is None:
            return LocalSource(self.model.decoding, s.workers, 2 * s.batch_size + 2 * s.workers, s.fingerprints)
        from .distributed import RaySource

        if s.precision == "int8":
            raise SimsearchError("indexing on Ray runs the fp32 model on every worker; an int8 store is "
                                 "indexed on one machine")
        if not self.model.from_handle:
            raise SimsearchError("indexing on Ray loads the model by its handle on every worker: "
                                 "open the store with a model URL or folder, not an Embedder object")
        return RaySource(ray, self.model.spec, s, staging=ray.staging or str(self.root / STAGING_DIR))

    def write(self, changes: Changes) -> None:
        """Write rows as the indexer does (one transaction, FAISS in step, checkpointed): for vectors made
        elsewhere. A new store records its model first (loading it, for its dimension)."""
        with self.collection.writer():
            self._sync()
            self._begin()
            self.collection.apply(changes)

    def remove(self, paths: Iterable[str | os.PathLike[str]]) -> int:
        """Forget files (or everything under folders) without touching them on disk; returns how many."""
        resolved = [absolute(p) for p in paths]
        unknown = [p for p in resolved if not self.catalog.ids_for_paths([p])]
        if unknown:
            raise NotFoundError(f"not in the store: {', '.join(unknown)}")
        ids = self.catalog.ids_for_paths(resolved)
        with self.collection.writer():
            self._sync()
            self.collection.delete(ids)
        return len(ids)

    def check(self, *, repair: bool = False) -> CheckReport:
        """Every part of the store checked against the catalog (simsearch.check); repair: rebuild what can be."""
        self._sync()
        return check_store(self.root, self.collection, self.model.dim if self.model.recorded else None, repair=repair)

    def optimize(self, *, target_recall: float = 0.95, nlist: int | None = None, seed: int = 0,
                 kind: str = "auto") -> OptimizeReport:
        """Move to an approximate index tuned to target_recall: kind ivf-sq8, ivf-pq or auto (see
        Collection.optimize)."""
        self._sync()
        return self.collection.optimize(target_recall=target_recall, nlist=nlist, seed=seed, kind=kind)

    # reading ----------------------------------------------------------------------------------
    def query_vector(self, probe: Any, *, max_pixels: int | None = None) -> np.ndarray:
        """The unit query vector for any kind of probe. max_pixels: a tighter decoding limit for this probe
        (the server's uploads) than the store's own."""
        self._sync()
        dim = self.collection.vector_index.dim
        if isinstance(probe, (bool, np.bool_)):
            raise QueryError(f"cannot query by {probe!r}")
        if isinstance(probe, (int, np.integer)):
            vec = self.collection.vector(int(probe))
            if vec is None:
                raise NotFoundError(f"no indexed image with id {int(probe)}")
            return vec
        if isinstance(probe, np.ndarray) and probe.ndim == 1:
            if probe.shape[0] != dim or not np.all(np.isfinite(probe)):
                raise QueryError(f"query vector must be {dim} finite floats, got shape {list(probe.shape)}")
            return l2_normalize(probe[None].astype(np.float32))[0]
        if isinstance(probe, np.ndarray):
            probe = array_to_image(probe)
        elif isinstance(probe, str) and is_url(probe):
            probe = fetch_url(probe)  # bounded in size and time; then decoded like any bytes
        elif isinstance(probe, (str, os.PathLike)):
            probe = Path(probe).expanduser()
            stored = self.collection.unchanged_vector(probe)
            if stored is not None:
                return stored
        elif not isinstance(probe, (bytes, bytearray, memoryview, Image.Image)):
            raise QueryError(f"cannot query by a {type(probe).__name__}: give a path, bytes, a PIL image, "
                             f"an array, an indexed id or a vector")
        # decoded before the model loads (the store knows its input size): a bad probe fails at once
        decoding = self.model.decoding
        if max_pixels is not None:
            decoding = replace(decoding, max_pixels=min(max_pixels, decoding.max_pixels))
        pixels, _ = decoding.load(probe)
        return self.embedder.embed(pixels[None])[0]

    def examples_vector(self, positives: Sequence[Any], negatives: Sequence[Any] = (), *,
                        max_pixels: int | None = None) -> np.ndarray:
        """One query vector for several examples (Rocchio): the positives' unit vectors averaged, minus
        NEGATIVE_WEIGHT times the negatives' average, normalised. Chosen over ranking by each example's best
        cosine, and the weight set, by bench/examples.py on corel1k with the trained stand-in: mAP 0.49 for
        one example, 0.56 for three (0.52 by best cosine); a negative from the most confused class at 0.25:
        0.558 -> 0.575, while 0.5 and above pushed the wanted photos down too (0.54, 0.43)."""
        if not positives:
            raise QueryError("give at least one example photo to search for (negative examples only say what "
                             "to push down)")
        pos = np.stack([self.query_vector(p, max_pixels=max_pixels) for p in positives])
        vec = pos.mean(axis=0)
        if negatives:
            neg = np.stack([self.query_vector(p, max_pixels=max_pixels) for p in negatives])
            vec = vec - NEGATIVE_WEIGHT * neg.mean(axis=0)
        if float(np.linalg.norm(vec)) < 1e-6:
            raise QueryError("the examples cancel each other out: there is nothing left to search for")
        return l2_normalize(vec[None].astype(np.float32))[0]

    def query(self, probe: Any = None, k: int = 10, *, negative: Sequence[Any] = (), where: ImageFilter | None = None,
              max_pixels: int | None = None, label: str | None = None,
              min_probability: float = DEFAULT_MIN_PROBABILITY) -> list[Hit]:
        """Nearest neighbours of a path, an http(s) URL, bytes, PIL image, array, indexed id or vector, best first.

        probe: one of those, or a list (or tuple) of them: photos like all of them (examples_vector).
        negative: examples of what is not wanted; their look-alikes move down.
        where: only photos passing this filter; the k returned are the true top k among them.
        label: an ImageNet class or a WordNet word above classes ("golden retriever", "dog"; simsearch.labels):
        the photos whose labels give it at least min_probability, most probable first (score: the
        probability); with a probe too, those photos ranked by similarity to it instead."""
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        if where and where.folder:
            where = replace(where, folder=absolute(where.folder))
        among = None
        if label is not None:
            ranked = self._by_label(label, where, min_probability, None if probe is not None else k)
            if probe is None or not ranked:
                records = self.catalog.records(i for i, _ in ranked)
                return [Hit.from_record(records[i], p) for i, p in ranked if i in records]
            among, where = np.array([i for i, _ in ranked], np.int64), None
        elif probe is None:
            raise QueryError("give a photo to search with, or a label")
        if isinstance(probe, (list, tuple)) or negative:
            positives = list(probe) if isinstance(probe, (list, tuple)) else [probe]
            vec = self.examples_vector(positives, list(negative), max_pixels=max_pixels)
        else:
            vec = self.query_vector(probe, max_pixels=max_pixels)  # decoding and the model run outside the lock
        return self.collection.search(vec, k, where, among=among)

    def _by_label(self, label: str, where: ImageFilter | None, min_probability: float,
                  limit: int | None) -> list[tuple[int, float]]:
        meaning = Vocabulary.shipped().meaning(label)
        self._require_labels()
        if not 0 <= min_probability <= 1:
            raise QueryError(f"min_probability must be in [0, 1], got {min_probability}")
        return self.catalog.by_labels(meaning.classes, where, min_probability, limit)

    def _require_labels(self) -> None:
        if not self.labels.enabled:
            raise NotFoundError(f"store {self.root} has no labels: add them with `simsearch index --labels` "
                                f"(each photo is classified once, nothing is embedded again)")

    def labels_of(self, probe: Any, k: int = 5) -> list[Label]:
        """A photo's top ImageNet classes: an indexed id (or a path indexed unchanged) from the store's labels,
        any other photo (a path, bytes, a PIL image, an array) classified now by the store's classifier."""
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        vocab = Vocabulary.shipped()
        if isinstance(probe, (int, np.integer)) and not isinstance(probe, (bool, np.bool_)):
            rec = self.catalog.records([int(probe)]).get(int(probe))
            if rec is None or rec["status"] != OK:
                raise NotFoundError(f"no indexed image with id {int(probe)}")
            self._require_labels()
            top = self.catalog.labels_of(rec["sha256"])
            if not top:
                raise NotFoundError(f"image {int(probe)} has no labels yet (it could not be decoded again): "
                                    f"run `simsearch index`")
        else:
            if isinstance(probe, (str, os.PathLike)) and not is_url(str(probe)):
                entry = self.catalog.entry_for_path(absolute(probe))
                if entry is not None and entry.sha256 and self.labels.enabled and self.collection.unchanged_vector(
                        Path(probe).expanduser()) is not None and (top := self.catalog.labels_of(entry.sha256)):
                    return [Label(c, vocab.name(c), p) for c, p in top[:k]]
            if isinstance(probe, np.ndarray):
                probe = array_to_image(probe)
            elif isinstance(probe, str) and is_url(probe):
                probe = fetch_url(probe)
            pixels, _ = self.model.decoding.load(probe)
            top = self.labels.classifier.top(pixels[None], k)[0]
        return [Label(c, vocab.name(c), p) for c, p in top[:k]]

    def duplicates(self, min_cosine: float = DEFAULT_MIN_COSINE, *, neighbours: int = DEFAULT_NEIGHBOURS,
                   chunk: int = 1024, include_resolved: bool = False,
                   progress: Callable[[Progress], None] | None = None, similar: bool = False) -> list[DuplicateGroup]:
        """Verified copies not yet resolved, largest first (simsearch.duplicates); similar: the groups of
        look-alikes instead (kind "similar": bursts, second shots of a scene; never proposed for the trash)."""
        self._sync()
        return find_duplicates(self.collection, min_cosine, neighbours=neighbours, chunk=chunk, progress=progress,
                               include_resolved=include_resolved, fingerprint_of=self.model.decoding.fingerprint,
                               similar=similar)

    def resolve(self, group: str, *, keep: int | Sequence[int] | None = None,
                trash_others: bool = False) -> DuplicateGroup:
        """Record a decision on a group as `duplicates` last listed it (keep None: not duplicates; one id,
        or several to keep more than one: trash_others then moves only the rest)."""
        return resolve_group(self.collection, group, keep=keep, trash_others=trash_others, forget=self.remove,
                             verify=self._verify_content)

    def resolve_sure(self, groups: Sequence[str] | None = None, *, trash_others: bool = False) -> list[DuplicateGroup]:
        """Keep the suggested photo of every group that needs no look (every pair the same bytes or resized;
        groups: those of them, as last listed, else every such group found now); returns the groups resolved."""
        if groups is None:
            groups = [g.id for g in self.duplicates() if g.sure]
        return resolve_sure(self.collection, groups, trash_others=trash_others, forget=self.remove,
                            verify=self._verify_content)

    def split(self, group: str, *parts: Sequence[int]) -> DuplicateGroup:
        """Record that a listed group is several: each part (image ids) is linked only inside, the photos named
        in no part form one more; the parts are listed as groups of their own from then on (undo takes it back)."""
        return split_group(self.collection, group, parts)

    def undo(self, group: str | None = None) -> Undone:
        """Take back a duplicate decision (group's, else the latest): the photos it moved to the trash go
        back where they were (the freedesktop trash, simsearch.trash) and are indexed again, and the group
        is listed again."""
        from .trash import restore

        undone, _ = undo_decision(self.collection, group, restore)
        back = [f for f in self.folders() if any(p.startswith(f.rstrip("/") + "/") for p in undone.restored)]
        for folder in back:  # incremental: only what came back is embedded (or found by its content)
            self.index(folder)
        return undone

    def _verify_content(self, member: Member) -> None:
        """A member's file holds, read now, the bytes it was verified with (raises NotFoundError / ChangedError)."""
        with open_verified(member.path, self.folders(), size=member.size, mtime_ns=None,
                           sha256=member.sha256, max_bytes=self.settings.max_file_bytes,
                           what=f"image {member.id}"):
            pass

    def ann_recall(self, k: int = 10, queries: int = 200, seed: int = 0) -> float:
        """recall@k of the current index against exact search (see Collection.recall)."""
        self._sync()
        return self.collection.recall(k, queries, seed)

    def open_indexed(self, image_id: int) -> tuple[Photo, BinaryIO]:
        """The indexed photo's file, opened only if it is still that photo: inside the store's folders once
        links are resolved (a photo swapped for a link to elsewhere is not followed), a regular file, and
        of the recorded size and time, or else of the recorded content (SHA-256). The caller closes it."""
        rec = self.get(image_id)
        if rec.status != OK:
            raise NotFoundError(f"image {image_id} is not indexed ({rec.error})")
        return rec, open_verified(rec.path, self.folders(), size=rec.size, mtime_ns=rec.mtime_ns,
                                  sha256=rec.sha256, max_bytes=self.settings.max_file_bytes,
                                  what=f"image {image_id}")

    def browse(self, where: ImageFilter | None = None, after: BrowseKey | None = None,
               limit: int = 60) -> tuple[list[Photo], int | None]:
        """A page of the collection, newest first, and on the first page how many pass `where` (Catalog.browse)."""
        where = replace(where, folder=absolute(where.folder)) if where and where.folder else where
        rows, total = self.catalog.browse(where or ImageFilter(), after, limit)
        return [Photo.from_record(r) for r in rows], total

    def get(self, image_id: int) -> Photo:
        rec = self.catalog.records([image_id]).get(image_id)
        if rec is None:
            raise NotFoundError(f"no image with id {image_id}")
        return Photo.from_record(rec)

    def stats(self) -> StoreStats:
        self._sync()
        counts = self.catalog.counts()
        rec, s = self.model.recorded or {}, self.settings
        index_file = self.root / INDEX_FILE
        index = self.collection.vector_index if self.collection.is_open else None
        ix = self.collection.settings
        return StoreStats(
            store=str(self.root), db=self.catalog.url, model=rec.get("model", self.model.handle),
            fingerprint=rec.get("fingerprint"), precision=str(rec.get("precision", s.precision)), runtime=s.runtime,
            dim=rec.get("dim"), input_size=rec.get("input_size"), resize=s.resize,
            images=counts["images"], failed=counts["failed"], vectors=len(index) if index is not None else 0,
            folders=self.catalog.get_meta("folders") or [], last_indexed_at=counts["last_indexed_at"],
            index_bytes=index_file.stat().st_size if index_file.exists() else 0,
            index_kind=index.kind if index is not None else "flat",
            nlist=ix.nlist, nprobe=ix.nprobe, recall_at_10=ix.recall_at_10,
            precision_choice=rec.get("precision_choice"),
            folder_options={f: self.scan_options(f).to_meta() for f in self.folders()},
            labels=self.labels.recorded | {"labelled": self.catalog.labelled()} if self.labels.enabled else None,
        )

    def failures(self) -> list[Failure]:
        return [Failure.from_record(r) for r in self.catalog.failures()]

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _store_folder(root: Path, *, create: bool, has_db: bool) -> Path:
    if not create and not has_db and not (root / CATALOG_FILE).exists():
        raise NotFoundError(f"no store at {root}: build one with `simsearch index FOLDER --store {root}` "
                            f"(in Python: simsearch.open(..., create=True))")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create store folder {root}: {exc.strerror or exc}") from exc
    return root.resolve()


open = Store  # `simsearch.open(...)`: the store is its own factory, with one signature to keep


def absolute(path: str | os.PathLike[str]) -> str:
    """A path as the catalog holds it (links resolved); a link loop is the caller's error, not a crash."""
    try:
        return str(Path(path).expanduser().resolve())
    except (RuntimeError, OSError) as exc:  # RuntimeError: Python < 3.13's "Symlink loop"
        raise QueryError(f"{path}: cannot follow this path ({exc})") from exc
