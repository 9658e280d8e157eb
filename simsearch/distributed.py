"""Index on a Ray cluster: files in shards, decoded by Ray tasks, embedded by a pool of actors.

Ray Data runs the pipeline; every shard ends as one Parquet file in a staging folder (local, or any
pyarrow filesystem: s3://, gs://, hdfs://), written whole or not at all, and named after its content
(paths, sizes, times) and the model, so a re-run reuses every shard that was fully written. The driver
reads the shards back in file order: `RaySource` is a source of prepared items like the local thread
pool (simsearch.prepare), so the indexing run merges them exactly as a single-machine run would: same
transactions, same moves and copies, same ids.

Every worker node must see the photos at the same paths, and the model handle (a URL, or a folder on
shared storage), and have simsearch installed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import ModelSpec, Settings
from .errors import SimsearchError, StoreError
from .files import atomic_write
from .images import ImageInfo
from .paths import from_catalog, to_catalog
from .prepare import Classifier, Decoded, Decoding, Prepared, SourceStats, Task, decode_file

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

log = logging.getLogger(__name__)

SHARD_SUFFIX = ".parquet"
DEFAULT_SHARD_SIZE = 256


@dataclass(frozen=True)
class RayOptions:
    """How `Store.index` runs on Ray instead of this process's threads."""

    address: str | None = None  # a cluster ("auto": RAY_ADDRESS or the one started on this machine; "local": a new one)
    staging: str | None = None  # folder or URI for the Parquet shards; default STORE/staging (must be shared storage)
    shard_size: int = DEFAULT_SHARD_SIZE  # files per shard: the unit of work, of retry and of resume
    actors: int | None = None  # embedding actors; default one per GPU, else one per node with CPUs to spare
    gpus_per_actor: float | None = None  # default 1 when the cluster has GPUs, else 0
    # CPUs reserved by each embedding actor, none by default: TensorFlow uses every core it finds whatever Ray
    # reserves, and a reservation lets actors restarted after a node loss take the last CPUs of the surviving
    # nodes, leaving the decoding tasks they wait on unscheduled (a deadlock, seen with 1).
    actor_cpus: float = 0.0
    decode_cpus: float = 1.0  # CPUs reserved by each decoding task

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"actors must be >= 1, got {self.actors}")


@dataclass(frozen=True)
class ShardRow:
    """One file's result as a shard holds it: a vector, or the reason it failed."""

    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    info: ImageInfo | None
    error: str | None
    vector: np.ndarray | None


FileKey = tuple[str, int, int]  # path, size, mtime_ns: a file as it was when it was read


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise SimsearchError("indexing on Ray needs Ray Data: pip install 'simsearch[ray]'") from exc
    return ray


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail at once, with the reason, when a cluster address (host:port, or RAY_ADDRESS for auto) does not
    answer: Ray itself retries an unreachable address for minutes before it gives up."""
    if address in (None, "auto"):
        address = os.environ.get("RAY_ADDRESS") or None
    if address in (None, "auto", "local"):  # Ray finds (or starts) the cluster on this machine itself
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        raise SimsearchError(f"Ray cluster address {address!r} is not HOST:PORT, 'auto' or 'local'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise SimsearchError(f"cannot reach a Ray cluster at {address}: {exc.strerror or exc} (is `ray start` "
                             f"running there, and the port open?)") from exc


def shard_schema(dim: int) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([
        ("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("sha256", pa.string()),
        ("width", pa.int32()), ("height", pa.int32()), ("format", pa.string()), ("taken_at", pa.timestamp("us")),
        ("error", pa.string()), ("decoded_from", pa.string()), ("vector", pa.list_(pa.float32(), dim)),
    ])


def staging_filesystem(staging: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and base path for a local folder or a URI (s3://bucket/prefix, gs://...)."""
    import pyarrow.fs as pafs

    if "://" not in staging:
        staging = os.path.abspath(os.path.expanduser(staging))
    try:
        fs, base = pafs.FileSystem.from_uri(staging)
        fs.create_dir(base, recursive=True)
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot use staging location {staging}: {exc}") from exc
    return fs, base.rstrip("/")


def provenance_key(model: str, input_size: tuple[int, int], resize: str, max_pixels: int) -> str:
    """Shards made with another model or preprocessing live in another folder and are never mixed in."""
    text = json.dumps([model, list(input_size), resize, max_pixels])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def shard_name(files: list[FileKey]) -> str:
    h = hashlib.sha1()
    for path, size, mtime in files:
        h.update(os.fsencode(path) + f"\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:24] + SHARD_SUFFIX


def write_shard(fs: pafs.FileSystem, folder: str, name: str, table: pa.Table) -> None:
    """Whole or not at all: on a local disk through atomic_write; an object store's put is atomic itself."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    if isinstance(fs, pafs.LocalFileSystem):
        atomic_write(Path(folder) / name, data)
        return
    with fs.open_output_stream(f"{folder}/{name}") as out:
        out.write(data)


def _decode_shard(row: dict[str, Any], *, decoding: Decoding) -> dict[str, Any]:
    """Ray task: read, hash and decode one shard's files, as a local run does (prepare.decode_file)."""
    t0 = time.perf_counter()
    meta, pixels = [], []
    for path, size, mtime in json.loads(row["files"]):
        d = decode_file(path, decoding, fingerprint=False)  # taken when duplicates first needs it
        entry: dict[str, Any] = {"path": path, "size": size, "mtime_ns": mtime, "sha256": d.sha256, "error": d.error}
        if d.pixels is not None and d.info is not None:
            pixels.append(d.pixels)
            entry.update(width=d.info.width, height=d.info.height, format=d.info.format, decoded_from=d.info.decoded_from,
                         taken_at=d.info.taken_at.isoformat() if d.info.taken_at else None)
        meta.append(entry)
    h, w = decoding.input_size
    stacked = np.stack(pixels) if pixels else np.zeros((0, h, w, 3), np.uint8)
    return {"shard": row["shard"], "meta": json.dumps(meta), "pixels": stacked,
            "decode_s": time.perf_counter() - t0}


class _EmbedShards:
    """Ray actor: loads the model once, embeds each decoded shard and writes it to staging."""

    def __init__(self, spec: ModelSpec, batch_size: int, staging: str, folder: str) -> None:
        from .embedder import load_embedder

        # the driver's runtime, compiled once per node into that node's cache
        self.embedder = load_embedder(spec.handle, runtime=spec.runtime, fingerprint=spec.fingerprint,
                                      batch_size=batch_size, precision="bf16" if spec.precision == "bf16" else "fp32")
        got = self.embedder.spec
        if got.dim != spec.dim or (spec.fingerprint and got.fingerprint and got.fingerprint != spec.fingerprint):
            raise StoreError(f"model {spec.handle} on this worker is not the store's: {got.dim} dimensions, "
                             f"content {got.fingerprint}; the store has {spec.dim}, content {spec.fingerprint}")
        self.batch_size, self.dim, self.folder = batch_size, spec.dim, folder
        self.schema = shard_schema(spec.dim)
        self.fs, _ = staging_filesystem(staging)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import pyarrow as pa

        out: dict[str, list[Any]] = {"shard": [], "decode_s": [], "embed_s": []}
        for shard, meta_json, pixels, decode_s in zip(batch["shard"], batch["meta"], batch["pixels"],
                                                      batch["decode_s"]):
            t0 = time.perf_counter()
            meta = json.loads(meta_json)
            pixels = np.asarray(pixels)
            vecs = [self.embedder.embed(pixels[i : i + self.batch_size]) for i in range(0, len(pixels), self.batch_size)]
            vectors = iter(np.concatenate(vecs) if vecs else np.zeros((0, self.dim), np.float32))
            cols: dict[str, list[Any]] = {k: [] for k in self.schema.names}
            for m in meta:
                cols["path"].append(to_catalog(m["path"]))  # Arrow strings are UTF-8: stored as the catalog does
                for k in ("size", "mtime_ns", "sha256", "error"):
                    cols[k].append(m[k])
                for k in ("width", "height", "format", "decoded_from"):
                    cols[k].append(m.get(k))
                cols["taken_at"].append(datetime.fromisoformat(m["taken_at"]) if m.get("taken_at") else None)
                cols["vector"].append(None if m["error"] else next(vectors).tolist())
            write_shard(self.fs, self.folder, shard, pa.table(cols, schema=self.schema))
            out["shard"].append(shard)
            out["decode_s"].append(float(decode_s))
            out["embed_s"].append(time.perf_counter() - t0)
        return out


@dataclass
class RayStats:
    shards: int = 0  # shards computed in this run
    reused_shards: int = 0  # shards left complete by an earlier run that did not finish
    decode: float = 0.0  # seconds, summed over decoding tasks
    embed: float = 0.0  # seconds, summed over embedding actors
    ray_seconds: float = 0.0  # wall time of the pipeline


class RaySource:
    """The Ray source of prepared items (see simsearch.prepare): plans shards, runs the pipeline for those
    not yet written, and reads rows back in task order."""

    def __init__(self, options: RayOptions, spec: ModelSpec, settings: Settings, *, staging: str) -> None:
        self.options, self.spec, self.batch_size = options, spec, settings.batch_size
        self.decoding = Decoding.of(spec.input_size, settings)
        self.staging = staging
        self.stats = RayStats()
        self._used: set[str] = set()
        self.fs: Any = None  # the staging filesystem and this provenance's folder in it, set up by items()
        self.folder = self.staging_uri = ""

    def items(self, tasks: Sequence[Task], classifier: Classifier) -> Iterator[Prepared]:
        """The pipeline's rows as the items the local source would have made, in the same order."""
        self.fs, base = staging_filesystem(self.staging)
        d = self.decoding
        self.folder = f"{base}/{provenance_key(self.spec.fingerprint or self.spec.handle, d.input_size, d.resize, d.max_pixels)}"
        self.fs.create_dir(self.folder, recursive=True)
        self.staging_uri = self.staging if "://" in self.staging else self.folder
        for task, row in zip(tasks, self.results([(t.path, t.size, t.mtime_ns) for t in tasks])):
            yield classifier.item(task, Decoded(row.sha256, info=row.info, error=row.error, vector=row.vector))

    def finish(self) -> SourceStats:
        """After a complete merge the shards it used are in the catalog: they go."""
        for name in self._used:
            try:
                self.fs.delete_file(f"{self.folder}/{name}")
            except OSError as exc:
                log.warning("could not delete merged shard %s: %s", name, exc)
        st = self.stats
        return SourceStats(timings={"decode": st.decode, "embed": st.embed, "ray": st.ray_seconds},
                           ray={"shards": st.shards, "reused_shards": st.reused_shards})

    # planning -----------------------------------------------------------------------------------
    def _existing(self) -> dict[FileKey, str]:
        """Files already held by a fully written shard (left by an earlier run that did not finish)."""
        import pyarrow.fs as pafs
        import pyarrow.parquet as pq

        held: dict[FileKey, str] = {}
        for info in self.fs.get_file_info(pafs.FileSelector(self.folder, allow_not_found=True)):
            if info.type != pafs.FileType.File or not info.base_name.endswith(SHARD_SUFFIX):
                continue
            try:
                t = pq.read_table(info.path, columns=["path", "size", "mtime_ns"], filesystem=self.fs)
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable shard %s: %s", info.path, exc)
                continue
            for path, size, mtime in zip(*(t.column(c).to_pylist() for c in ("path", "size", "mtime_ns"))):
                held[(from_catalog(path), size, mtime)] = info.base_name
        return held

    def results(self, files: list[FileKey]) -> Iterator[ShardRow]:
        """Every file's row, in the order given; shards are computed on the cluster as the reader needs them."""
        held = self._existing()
        todo = [f for f in files if f not in held]
        shards = [todo[i : i + self.options.shard_size] for i in range(0, len(todo), self.options.shard_size)]
        names = [shard_name(s) for s in shards]
        new = set(names)
        for name, shard in zip(names, shards):
            for f in shard:
                held[f] = name
        self.stats.shards = len(shards)
        self.stats.reused_shards = len({held[f] for f in files} - new)
        done = self._run(names, shards)
        finished: set[str] = set()
        cache: OrderedDict[str, dict[FileKey, ShardRow]] = OrderedDict()
        for f in files:
            name = held[f]
            while name in new and name not in finished:  # shards come back in order: wait for this one
                got = next(done, None)
                if got is None:
                    raise StoreError(f"the Ray pipeline ended without writing shard {name}")
                finished.add(got)
            if name not in cache:
                cache[name] = self._read(name)
                if len(cache) > 8:
                    cache.popitem(last=False)
            yield cache[name][f]
        for _ in done:  # let the pipeline finish cleanly
            pass

    # running ------------------------------------------------------------------------------------
    def _run(self, names: list[str], shards: list[list[FileKey]]) -> Iterator[str]:
        if not shards:
            return iter(())
        ray = _import_ray()
        import ray.data

        if not ray.is_initialized():
            address = self.options.address
            try:
                ray.init(address=None if address == "local" else address or "auto", logging_level=logging.WARNING,
                         log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                hint = ("" if os.environ.get("RAY_AUTH_MODE") else
                        " (a cluster with token authentication, which Ray 2.60 turns on for the clusters ray.init "
                        "starts, also needs RAY_AUTH_MODE=token here, and its token in ~/.ray/auth_token or "
                        "RAY_AUTH_TOKEN)")
                raise SimsearchError(f"cannot reach a Ray cluster at {address or 'auto'}: {exc}{hint}") from exc
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-run INFO lines drown our progress bar
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # shards come back in file order: ids as a local run gives
        ctx.enable_progress_bars = False  # the CLI shows its own progress
        resources = ray.cluster_resources()
        gpus = self.options.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        opts = self.options
        if resources.get("CPU", 0) < opts.actor_cpus + opts.decode_cpus:
            raise SimsearchError(f"the Ray cluster has {resources.get('CPU', 0):g} CPUs; indexing needs at least "
                                 f"{opts.actor_cpus + opts.decode_cpus:g} (one actor and one decoding task)")
        actors = opts.actors
        if actors is None and gpus:
            actors = max(1, int(resources.get("GPU", 0) // gpus))
        elif actors is None:  # one per node that can also run a decoding task, so decoding never starves
            cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
            actors = max(1, sum(1 for c in cpus if c >= opts.actor_cpus + opts.decode_cpus))
        actors = min(actors, len(shards))
        items = [{"shard": n, "files": json.dumps(s)} for n, s in zip(names, shards)]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        h, w = self.decoding.input_size
        ds = ds.map(_decode_shard, fn_kwargs={"decoding": self.decoding},
                    num_cpus=opts.decode_cpus,
                    # a shard's pixels plus one full-size photo being decoded; as a resource request it also
                    # keeps Ray from fusing decoding into the actors, which would stop it overlapping inference
                    memory=len(shards[0]) * h * w * 3 + (256 << 20))
        # Ray Data's defaults do the fault tolerance: tasks retried without limit, and an actor lost with
        # its node restarted elsewhere with its shard retried. A shard is written whole or not at all.
        ds = ds.map_batches(
            _EmbedShards, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=opts.actor_cpus, num_gpus=gpus,
            fn_constructor_kwargs={"spec": self.spec, "batch_size": self.batch_size, "staging": self.staging_uri,
                                   "folder": self.folder},
        )
        return self._rows(ds)

    def _rows(self, ds: Any) -> Iterator[str]:
        from ray.exceptions import RayError

        t0 = time.perf_counter()
        try:
            for row in ds.iter_rows():
                self.stats.decode += float(row["decode_s"])
                self.stats.embed += float(row["embed_s"])
                self.stats.ray_seconds = time.perf_counter() - t0
                yield str(row["shard"])
        except RayError as exc:  # what was merged so far stays; a re-run reuses the shards already written
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise SimsearchError(f"the Ray pipeline failed: {first}") from exc

    def _read(self, name: str) -> dict[FileKey, ShardRow]:
        import pyarrow.parquet as pq

        self._used.add(name)
        try:
            t = pq.read_table(f"{self.folder}/{name}", filesystem=self.fs)
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read shard {self.folder}/{name}: {exc}") from exc
        vec = t.column("vector").combine_chunks()  # one matrix, not a Python list per row
        dim = vec.type.list_size
        matrix = vec.values.slice(vec.offset * dim, len(vec) * dim).to_numpy(zero_copy_only=False)
        matrix = matrix.astype(np.float32, copy=False).reshape(len(vec), dim)
        has_vector = vec.is_valid().to_numpy(zero_copy_only=False)
        c = {k: t.column(k).to_pylist() for k in t.column_names if k != "vector"}
        out: dict[FileKey, ShardRow] = {}
        for i, path in enumerate(map(from_catalog, c["path"])):
            info = None
            if c["error"][i] is None:
                info = ImageInfo(c["width"][i], c["height"][i], c["format"][i], c["taken_at"][i],
                                 (c.get("decoded_from") or [None] * len(c["path"]))[i])
            key = (path, c["size"][i], c["mtime_ns"][i])
            out[key] = ShardRow(path, key[1], key[2], c["sha256"][i], info, c["error"][i],
                                matrix[i] if has_vector[i] else None)
        return out
