"""Silent corruption made loud: bytes changed on disk in the vector index or the catalog are found, and
what can be rebuilt from the catalog is (`simsearch check --repair`); a catalog file that is not one is
an error, never a fresh empty store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import simsearch
from simsearch.cli import main
from simsearch.embedder import HubEmbedder

from .conftest import photo


@pytest.fixture()
def built(tmp_path: Path, tiny_module: Path) -> Path:
    for i in range(40):
        photo(tmp_path / "photos" / f"p{i:02d}.jpg", seed=i)
    r = CliRunner().invoke(main, ["index", str(tmp_path / "photos"), "--store", str(tmp_path / "store"),
                                  "--model", str(tiny_module)])
    assert r.exit_code == 0, r.output
    return tmp_path / "store"


def _scribble(path: Path, at: float, size: int) -> None:
    """Garbage over `size` bytes from `at` (a fraction of the file) on: what a bad sector or a stray write does."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    data[start : start + size] = np.random.default_rng(0).integers(0, 256, min(size, len(data) - start),
                                                                    dtype=np.uint8).tobytes()
    with path.open("r+b") as f:  # in place: the file's size and name stay, as corruption leaves them
        f.write(bytes(data))


def test_garbage_inside_the_index_file_is_found_on_open_and_rebuilt(built: Path, tmp_path: Path,
                                                                    tiny_embedder: HubEmbedder) -> None:
    with simsearch.open(built) as store:
        before = store.query(tmp_path / "photos" / "p03.jpg", k=5)
    _scribble(built / "index.faiss", 0.5, 4096)  # inside the vectors: FAISS itself reads it without complaint
    r = CliRunner().invoke(main, ["check", "--store", str(built)])
    assert r.exit_code == 1 and "index" in r.output and "checksum" in r.output
    with simsearch.open(built) as store:
        after = store.query(tmp_path / "photos" / "p03.jpg", k=5)
        assert store.rebuilt_index
    assert [h.id for h in after] == [h.id for h in before]
    np.testing.assert_allclose([h.score for h in after], [h.score for h in before], atol=1e-6)
    assert CliRunner().invoke(main, ["check", "--store", str(built)]).exit_code == 0  # the rebuild was saved


def test_check_repair_mends_what_can_be_made_again(built: Path) -> None:
    _scribble(built / "index.faiss", 0.6, 2048)
    (built / ".index.faiss.killed.tmp").write_bytes(b"half a checkpoint")
    (built / "thumbnails" / "05").mkdir(parents=True)
    (built / "thumbnails" / "05" / "5-0123456789abcdef.jpg").write_bytes(b"\xff\xd8\xff half a JPEG")
    r = CliRunner().invoke(main, ["check", "--store", str(built), "--json"])
    report = json.loads(r.stdout)
    assert r.exit_code == 1 and {p["part"] for p in report["problems"]} == {"index", "temp-files", "renditions"}
    r = CliRunner().invoke(main, ["check", "--store", str(built), "--repair"])
    assert r.exit_code == 0 and r.output.count("(repaired)") == 3, r.output
    assert not (built / ".index.faiss.killed.tmp").exists()
    assert CliRunner().invoke(main, ["check", "--store", str(built)]).output.strip().endswith("no problems found")


@pytest.mark.parametrize("at", [0.3, 0.5, 0.8])  # whichever table the garbage lands in, read by a later part or not
def test_a_damaged_catalog_is_reported_and_not_claimed_repaired(built: Path, at: float) -> None:
    catalog = built / "catalog.sqlite"
    _scribble(catalog, at, 8192)  # garbage inside the database file
    r = CliRunner().invoke(main, ["check", "--store", str(built), "--repair"])
    assert r.exit_code == 1, r.output
    assert "catalog" in r.output and "integrity" in r.output and "backup" in r.output and "(repaired)" not in r.output


@pytest.mark.parametrize("content", [b"", b"these are not the bytes of a database" * 100])
def test_a_catalog_file_that_is_not_sqlite_is_an_error_not_a_new_store(built: Path, content: bytes) -> None:
    (built / "catalog.sqlite").write_bytes(content)
    for name in ("catalog.sqlite-wal", "catalog.sqlite-shm"):
        (built / name).unlink(missing_ok=True)
    for args in (["stats"], ["index", str(built.parent / "photos")]):
        r = CliRunner().invoke(main, [*args, "--store", str(built)])
        assert r.exit_code != 0 and "not a catalog simsearch wrote" in r.output, r.output
    assert (built / "catalog.sqlite").read_bytes() == content  # left as it was, for the user to look at
    assert os.path.getsize(built / "catalog.sqlite") == len(content)


@pytest.fixture()
def small_disk(tmp_path: Path) -> Path:
    """A 16 MB tmpfs of its own, to fill up (needs root, as CI runs)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> None:
    with (disk / "filler").open("wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    with (disk / "filler-small").open("wb", buffering=0) as f:  # the last few kilobytes too
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass


def test_a_full_disk_is_one_clear_line_and_reads_go_on(small_disk: Path, tmp_path: Path, tiny_module: Path) -> None:
    from fastapi.testclient import TestClient

    from simsearch.server import create_app

    photos = tmp_path / "photos"
    for i in range(6):
        photo(photos / f"p{i}.jpg", seed=i)
    store = ["--store", str(small_disk / "store")]
    runner = CliRunner()
    assert runner.invoke(main, ["index", str(photos), *store, "--model", str(tiny_module)]).exit_code == 0
    for i in range(6, 60):
        photo(photos / f"p{i}.jpg", seed=i)
    _fill(small_disk)
    r = runner.invoke(main, ["index", str(photos), *store])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert "no space left" in r.output and "nothing committed is lost" in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    r = runner.invoke(main, ["stats", *store, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["images"] == 6, r.output
    r = runner.invoke(main, ["query", str(photos / "p1.jpg"), *store, "-k", "1", "-o", "paths"])
    assert r.exit_code == 0 and r.stdout.strip() == str(photos / "p1.jpg"), r.output
    with simsearch.open(small_disk / "store") as s:
        client = TestClient(create_app(s, preload=False), base_url="http://localhost")
        page = client.get("/api/photos").json()["photos"]
        assert len(page) == 6 and client.get(page[0]["thumbnail"]).status_code == 200  # made, just not kept
    (small_disk / "filler").unlink()
    r = runner.invoke(main, ["index", str(photos), *store])
    assert r.exit_code == 0 and "54 added" in r.output and "6 unchanged" in r.output, r.output


def test_fingerprints_of_an_older_version_are_stale_not_damage(built: Path) -> None:
    """A fingerprint taken by an older simsearch is retaken by `duplicates` after an upgrade: `check` must not
    call it damaged; a fingerprint that does not parse is, and --repair drops it."""
    from simsearch.verify import VERSION

    with simsearch.open(built) as store:
        stored = dict(store.catalog.iter_fingerprints())
        assert len(stored) == 40
        old, bad = sorted(stored)[:2]
        store.catalog.add_fingerprints({old: bytes([VERSION - 1]) + stored[old][1:-100],
                                        bad: bytes([VERSION]) + stored[bad][1:-100]})
    r = CliRunner().invoke(main, ["check", "--store", str(built), "--json"])
    problems = json.loads(r.stdout)["problems"]
    assert r.exit_code == 1 and [(p["part"], p["detail"]) for p in problems] == [
        ("fingerprints", "1 duplicate fingerprints cannot be read")]
    r = CliRunner().invoke(main, ["check", "--store", str(built), "--repair"])
    assert r.exit_code == 0 and "(repaired)" in r.output
    with simsearch.open(built) as store:
        assert bad not in dict(store.catalog.iter_fingerprints())
