"""The pipeline without the model, each figure next to a plain baseline in the same run. Prints; asserts nothing.

Listing (--listing N): N empty-but-named photo files whose catalog rows already match them (written by a raw
sqlite3 executemany, as a finished earlier run would have left them); a fresh process runs `Store.index` on
the folder, which changes nothing, and reports files/s and its peak RSS, beside a plain `os.walk` + `os.stat`
loop over the same files.

Pipeline ceiling (--photos N): N tiny PNGs indexed by `Store.index` with a trivial embedder (a fixed random
projection of 32x32 pixels, through CallableEmbedder), so only listing, reading, hashing, decoding and
writing are timed, per stage; beside a plain one-thread loop doing the same per-file work (walk, stat,
read, SHA-256, Pillow decode (JPEGs at reduced size, as the store decodes them) and resize, project, sqlite3
executemany in transactions of 256), once without duplicate fingerprints (the loop's work) and once with
them (what `index` does by default). --folder DIR: the same on real photos instead of tiny PNGs.

Catalog rows/s: `Catalog.write` of new rows (path, facts, a 1024-d float32 vector) in batches of 256, against
a raw sqlite3 `executemany` of the same rows into the same two tables, in transactions of 256, with the
catalog's own pragmas (WAL, synchronous=FULL). With --postgres URL, the same against PostgreSQL, beside two raw
baselines: psycopg `executemany`, and COPY (ids from the sequence, rows by COPY, vectors by binary COPY).

Ray merge (--merge N): the rows of N files in Parquet shards as Ray's workers leave them, merged by
`Store.index(ray=...)`, which finds every shard already written and so runs no Ray job: the driver's own
rows/s (read the shards, classify, write the catalog, fill FAISS), beside `Catalog.write` of N rows alone,
on SQLite and (with --postgres) PostgreSQL; --rounds rounds.

    python bench/pipeline.py --rows 20000 --listing 1000000 --photos 5000
    python bench/pipeline.py --rows 0 --folder ../shared/data/corel1k/images
    python bench/pipeline.py --rows 20000 --postgres postgresql+psycopg://user:pw@127.0.0.1/postgres
    python bench/pipeline.py --rows 0 --merge 50000 --postgres postgresql+psycopg://user:pw@127.0.0.1/postgres
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe  # noqa: E402
from simsearch.catalog import Catalog, Changes, ImageFields  # noqa: E402

BATCH = 256


def rows(n: int, start: int = 0) -> list[tuple[ImageFields, np.ndarray]]:
    rng = np.random.default_rng(start)
    vecs = rng.standard_normal((n, 1024)).astype(np.float32)
    return [(ImageFields(f"/photos/{start + i:08d}.jpg", 123456, 1_700_000_000_000_000_000 + i, f"{start + i:064x}",
                         640, 480, "JPEG", datetime(2024, 5, 1)), vecs[i]) for i in range(n)]


def catalog_rate(url: str, n: int) -> float:
    catalog = Catalog(url)
    data = rows(n)
    t = time.perf_counter()
    for s in range(0, n, BATCH):
        catalog.write(Changes(upserts=data[s : s + BATCH]))
    took = time.perf_counter() - t
    catalog.close()
    return n / took


def raw_sqlite_rate(path: Path, n: int) -> float:
    Catalog(f"sqlite:///{path}").close()  # the same schema
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    data = rows(n, start=10_000_000)
    t = time.perf_counter()
    for s in range(0, n, BATCH):
        part = data[s : s + BATCH]
        con.execute("BEGIN")
        con.executemany(  # sqlite3 returns no rows from executemany: the ids are read back by path
            "INSERT INTO images (path, size, mtime_ns, sha256, width, height, format, taken_at, indexed_at, status) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'ok')",
            [(f.path, f.size, f.mtime_ns, f.sha256, f.width, f.height, f.format, f.taken_at, datetime.now())
             for f, _ in part])
        ids = dict(con.execute("SELECT path, id FROM images WHERE path IN (%s)" % ",".join("?" * len(part)),
                               [f.path for f, _ in part]).fetchall())
        con.executemany("INSERT INTO vectors (image_id, data) VALUES (?, ?)",
                        [(ids[f.path], v.tobytes()) for f, v in part])
        con.execute("COMMIT")
    took = time.perf_counter() - t
    con.close()
    return n / took


@contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """A new database for one measurement (the role needs CREATEDB), dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"simsearch_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def raw_postgres(url: str, n: int) -> Iterator[tuple[Any, list[tuple[ImageFields, np.ndarray]]]]:
    """A plain psycopg connection to a database with the catalog's schema, and the rows to write."""
    import psycopg
    from sqlalchemy.engine import make_url

    Catalog(url).close()  # the same schema
    u = make_url(url)
    with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                         dbname=u.database) as con:
        yield con, rows(n, start=10_000_000)


def raw_postgres_rate(url: str, n: int) -> float:
    with raw_postgres(url, n) as (con, data):
        t = time.perf_counter()
        for s in range(0, n, BATCH):
            part = data[s : s + BATCH]
            with con.transaction(), con.cursor() as cur:
                cur.executemany(
                    "INSERT INTO images (path, size, mtime_ns, sha256, width, height, format, taken_at, indexed_at, "
                    "status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'ok') RETURNING id",
                    [(f.path, f.size, f.mtime_ns, f.sha256, f.width, f.height, f.format, f.taken_at, datetime.now())
                     for f, _ in part], returning=True)
                ids = []
                while True:
                    ids.append(cur.fetchone()[0])  # type: ignore[index]
                    if not cur.nextset():
                        break
                cur.executemany("INSERT INTO vectors (image_id, data) VALUES (%s, %s)",
                                [(i, v.tobytes()) for i, (_, v) in zip(ids, part)])
        took = time.perf_counter() - t
    return n / took


def projection() -> object:
    """The trivial embedder: a fixed random projection of 32x32 RGB pixels to 1024 dimensions."""
    from simsearch.embedder import CallableEmbedder

    w = np.random.default_rng(0).standard_normal((32 * 32 * 3, 1024)).astype(np.float32)
    # batches of 256, as the plain loop multiplies (the default 32 doubled the matrix products' time)
    return CallableEmbedder(lambda x: x.reshape(len(x), -1) @ w, name="projection", input_size=(32, 32),
                            batch_size=BATCH)


def make_listing(root: Path, db: Path, n: int) -> None:
    """n empty .jpg files, 1000 a folder, and the catalog rows a finished run would hold for them."""
    from simsearch.catalog import Catalog

    Catalog(f"sqlite:///{db}").close()
    con = sqlite3.connect(db, isolation_level=None)
    empty = hashlib.sha256(b"").hexdigest()
    for d in range(0, n, 1000):
        folder = root / f"{d // 1000:05d}"
        folder.mkdir(parents=True)
        rows = []
        for i in range(min(1000, n - d)):
            p = folder / f"IMG_{i:04d}.jpg"
            p.touch()
            rows.append((str(p), 0, p.stat().st_mtime_ns, empty, datetime.now(), "failed", "empty file"))
        con.execute("BEGIN")
        con.executemany("INSERT INTO images (path, size, mtime_ns, sha256, indexed_at, status, error) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        con.execute("COMMIT")
    con.close()


def listing_child(store: str, root: str) -> None:
    """In a fresh process: open the store and re-index the unchanged folder; print the figures as JSON."""
    import simsearch

    s = simsearch.open(store, model=projection())  # type: ignore[arg-type]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    report = s.index(root)
    took = time.perf_counter() - t
    print(json.dumps({"seconds": took, "scanned": report.scanned, "unchanged": report.unchanged,
                      "rss_before_mb": before / 1024, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def listing(n: int, tmp: Path) -> None:
    import simsearch

    root, store = tmp / "listing", tmp / "listing-store"
    t = time.perf_counter()
    store.mkdir()
    make_listing(root, store / "catalog.sqlite", n)
    with simsearch.open(store, model=projection()) as s:  # type: ignore[arg-type]
        s.index(root)  # records the folder (and warms the page cache for both sides)
    print(f"listing: {n:,} files made in {time.perf_counter() - t:.0f} s")
    t = time.perf_counter()
    walked = sum(len([os.stat(os.path.join(d, f)) for f in files]) for d, _, files in os.walk(root))
    plain = walked / (time.perf_counter() - t)
    out = subprocess.run([sys.executable, __file__, "--listing-child", str(store), str(root)], check=True,
                         capture_output=True, text=True).stdout
    child = json.loads(out.strip().splitlines()[-1])
    assert child["unchanged"] == n, child
    ours = n / child["seconds"]
    print(f"listing: no-change re-run {ours:,.0f} files/s, plain os.walk + os.stat {plain:,.0f} files/s, ratio "
          f"{ours / plain:.2f}; peak RSS {child['peak_rss_mb']:.0f} MB ({child['rss_before_mb']:.0f} MB before the run)")


def tiny_pngs(root: Path, n: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"{i // 1000:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(folder / f"p{i:05d}.png")


def plain_loop(root: Path, db: Path) -> float:
    """One thread, the same per-file work as the store's pipeline, the way one would write it by hand."""
    from PIL import Image

    w = np.random.default_rng(0).standard_normal((32 * 32 * 3, 1024)).astype(np.float32)
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT UNIQUE, size INT, mtime_ns INT, sha256 TEXT, "
                "width INT, height INT, vector BLOB)")
    t, rows, n = time.perf_counter(), [], 0

    def commit() -> None:
        vecs = np.stack([r[-1] for r in rows]) / 255.0 @ w
        con.execute("BEGIN")
        con.executemany("INSERT INTO photos (path, size, mtime_ns, sha256, width, height, vector) VALUES (?,?,?,?,?,?,?)",
                        [(*r[:-1], v.astype(np.float32).tobytes()) for r, v in zip(rows, vecs)])
        con.execute("COMMIT")
        rows.clear()

    for d, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(d, f)
            st = os.stat(p)
            with open(p, "rb") as fh:
                data = fh.read()
            sha = hashlib.sha256(data).hexdigest()
            with Image.open(io.BytesIO(data)) as im:
                size = im.size
                im.draft("RGB", (32, 32))  # a JPEG decoded at reduced size, as the store decodes it
                pixels = np.asarray(im.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), np.float32).ravel()
            rows.append((p, st.st_size, st.st_mtime_ns, sha, size[0], size[1], pixels))
            n += 1
            if len(rows) == BATCH:
                commit()
    if rows:
        commit()
    con.close()
    return n / (time.perf_counter() - t)


def ceiling(n: int, tmp: Path, folder: Path | None = None) -> None:
    import simsearch
    from simsearch.config import Settings

    if folder is None:
        root = tmp / "tiny"
        tiny_pngs(root, n)
    else:
        root = folder
    plain = plain_loop(root, tmp / "plain.sqlite")
    for fingerprints in (False, True):  # without: the loop's own work; with: what `index` does by default
        with simsearch.open(tmp / f"ceiling-store-{fingerprints}", model=projection(), create=True,  # type: ignore[arg-type]
                            settings=Settings(batch_size=BATCH, fingerprints=fingerprints)) as s:
            t = time.perf_counter()
            report = s.index(root)
            ours = report.added / (time.perf_counter() - t)
        print(f"pipeline ceiling ({'with' if fingerprints else 'without'} fingerprints): Store.index {ours:,.0f} "
              f"photos/s, plain one-thread loop {plain:,.0f} photos/s, ratio {ours / plain:.2f}; stages (s): "
              f"{report.timings}", flush=True)


def raw_postgres_copy_rate(url: str, n: int) -> float:
    """The bulk baseline: ids drawn from the sequence, then COPY of the rows and binary COPY of the vectors."""
    cols = "id, path, size, mtime_ns, sha256, width, height, format, taken_at, indexed_at, status"
    with raw_postgres(url, n) as (con, data):
        t = time.perf_counter()
        for s in range(0, n, BATCH):
            part = data[s : s + BATCH]
            with con.transaction(), con.cursor() as cur:
                cur.execute("SELECT nextval('images_id_seq') FROM generate_series(1, %s)", (len(part),))
                ids = [r[0] for r in cur.fetchall()]
                with cur.copy(f"COPY images ({cols}) FROM STDIN") as copy:
                    for i, (f, _) in zip(ids, part):
                        copy.write_row((i, f.path, f.size, f.mtime_ns, f.sha256, f.width, f.height, f.format,
                                        f.taken_at, datetime.now(), "ok"))
                with cur.copy("COPY vectors (image_id, data) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["int8", "bytea"])
                    for i, (_, v) in zip(ids, part):
                        copy.write_row((i, v.tobytes()))
        took = time.perf_counter() - t
    return n / took


def merge(n: int, tmp: Path, url: str | None) -> float:
    """The Ray merge without Ray: the shards as the workers leave them, merged by `Store.index`, which finds
    every shard already written and so computes none; rows/s of the whole merge (read the Parquet, classify,
    write the catalog, fill FAISS)."""
    import pyarrow as pa

    import simsearch
    from simsearch.distributed import RayOptions, shard_schema, write_shard
    from tests.modules import build_tf2_saved_model

    module = tmp / "merge-model"
    if not module.exists():
        build_tf2_saved_model(module, dim=1024)
    root, store_dir = tmp / f"merge-{uuid.uuid4().hex[:6]}", tmp / f"merge-store-{uuid.uuid4().hex[:6]}"
    options = RayOptions(address="local")
    vecs = np.random.default_rng(1).standard_normal((n, 1024)).astype(np.float32)
    with simsearch.open(store_dir, model=module, create=True, db=url) as s:
        s.index(tmp / "merge-model")  # records the model: the shards' folder depends on it (no photos in there)
        source = s._source(options)  # the staging folder this store's shards go to
        root.mkdir()
        files = []
        for i in range(n):
            p = root / f"{i // 1000:05d}" / f"IMG_{i % 1000:04d}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"%08d" % i)
            st = p.stat()
            files.append((str(p), st.st_size, st.st_mtime_ns))
        files.sort()
        list(source.items([], None))  # type: ignore[arg-type]
        schema = shard_schema(1024)
        for k in range(0, n, options.shard_size):
            part = files[k : k + options.shard_size]
            cols = {"path": [f[0] for f in part], "size": [f[1] for f in part], "mtime_ns": [f[2] for f in part],
                    "sha256": [hashlib.sha256(b"%08d" % (k + j)).hexdigest() for j in range(len(part))],
                    "width": [640] * len(part), "height": [480] * len(part), "format": ["JPEG"] * len(part),
                    "taken_at": [datetime(2024, 5, 1)] * len(part), "error": [None] * len(part),
                    "vector": list(vecs[k : k + len(part)])}
            write_shard(source.fs, source.folder, f"{k:09d}.parquet", pa.table(cols, schema=schema))
        t = time.perf_counter()
        report = s.index(root, ray=options)
        took = time.perf_counter() - t
    assert report.added == n and report.ray.get("reused_shards") == -(-n // options.shard_size), report
    return n / took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000, help="rows for the catalog write rates (0: skip)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the catalog write rates")
    ap.add_argument("--postgres", help="a PostgreSQL URL whose database may be written (tables are made)")
    ap.add_argument("--listing", type=int, default=0, metavar="N", help="files for the no-change re-run (0: skip)")
    ap.add_argument("--photos", type=int, default=0, metavar="N", help="tiny PNGs for the pipeline ceiling (0: skip)")
    ap.add_argument("--folder", type=Path, help="the pipeline ceiling on this folder's photos instead of tiny PNGs")
    ap.add_argument("--merge", type=int, default=0, metavar="N",
                    help="rows for the Ray merge, from shards already written, beside Catalog.write (0: skip)")
    ap.add_argument("--listing-child", nargs=2, metavar=("STORE", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.listing_child:
        return listing_child(*args.listing_child)
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        if args.listing:
            listing(args.listing, Path(tmp))
        if args.photos or args.folder:
            ceiling(args.photos, Path(tmp), args.folder)
        for r in range(args.rounds if args.merge else 0):
            for name, url in (("SQLite", None), ("PostgreSQL", args.postgres)):
                if name == "SQLite" or url:
                    with scratch_database(url) if url else nullcontext() as db:
                        ours = merge(args.merge, Path(tmp), db)
                    with scratch_database(url) if url else nullcontext(f"sqlite:///{Path(tmp) / f'm{r}.sqlite'}") as db:
                        write = catalog_rate(db, args.merge)
                    print(f"Ray merge round {r + 1} ({name}): {ours:,.0f} rows/s from written shards, Catalog.write alone "
                          f"{write:,.0f} rows/s, ratio {ours / write:.2f}", flush=True)
        if not args.rows:
            return
        for r in range(args.rounds):  # interleaved, each in a new file: noise hits both sides alike
            raw = raw_sqlite_rate(Path(tmp) / f"raw{r}.sqlite", args.rows)
            ours = catalog_rate(f"sqlite:///{Path(tmp) / f'catalog{r}.sqlite'}", args.rows)
            print(f"SQLite round {r + 1}: Catalog.write {ours:,.0f} rows/s, raw sqlite3 executemany {raw:,.0f} rows/s, "
                  f"ratio {ours / raw:.2f}", flush=True)
    for r in range(args.rounds if args.postgres else 0):
        rates = []
        for rate in (raw_postgres_rate, raw_postgres_copy_rate, catalog_rate):
            with scratch_database(args.postgres) as url:
                rates.append(rate(url, args.rows))
        raw_pg, copy_pg, ours_pg = rates
        print(f"PostgreSQL round {r + 1}: Catalog.write {ours_pg:,.0f} rows/s, raw psycopg executemany {raw_pg:,.0f} "
              f"rows/s (ratio {ours_pg / raw_pg:.2f}), raw COPY {copy_pg:,.0f} rows/s (ratio {ours_pg / copy_pg:.2f})",
              flush=True)

if __name__ == "__main__":
    main()
