"""The pipeline without the model: catalog writes next to a raw baseline, in one run. Prints; asserts nothing.

Catalog rows/s: `Catalog.write` of new rows (path, facts, a 1024-d float32 vector) in batches of 256, against
a raw sqlite3 `executemany` of the same rows into the same two tables, in transactions of 256, with the
catalog's own pragmas (WAL, synchronous=FULL). With --postgres URL, the same against PostgreSQL (raw
baseline: psycopg `executemany`).

    python bench/pipeline.py --rows 20000
    python bench/pipeline.py --rows 20000 --postgres postgresql+psycopg://user:pw@127.0.0.1/postgres
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.duplicates import cpu  # noqa: E402
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


def raw_postgres_rate(url: str, n: int) -> float:
    import psycopg
    from sqlalchemy.engine import make_url

    Catalog(url).close()  # the same schema
    u = make_url(url)
    data = rows(n, start=10_000_000)
    with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                         dbname=u.database) as con:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--postgres", help="a PostgreSQL URL whose database may be written (tables are made)")
    args = ap.parse_args()
    print(f"CPU: {cpu()}")
    with tempfile.TemporaryDirectory() as tmp:
        raw = raw_sqlite_rate(Path(tmp) / "raw.sqlite", args.rows)
        ours = catalog_rate(f"sqlite:///{Path(tmp) / 'catalog.sqlite'}", args.rows)
    print(f"SQLite: Catalog.write {ours:,.0f} rows/s, raw sqlite3 executemany {raw:,.0f} rows/s, ratio {ours / raw:.2f}")
    if args.postgres:
        with scratch_database(args.postgres) as url:
            raw_pg = raw_postgres_rate(url, args.rows)
        with scratch_database(args.postgres) as url:
            ours_pg = catalog_rate(url, args.rows)
        print(f"PostgreSQL: Catalog.write {ours_pg:,.0f} rows/s, raw psycopg executemany {raw_pg:,.0f} rows/s, "
              f"ratio {ours_pg / raw_pg:.2f}")


if __name__ == "__main__":
    main()
