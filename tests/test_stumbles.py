"""What a newcomer tripped on (#29), each fixed with the habit people expect; every test here failed on
the main before the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import simsearch
from simsearch.catalog import ImageFilter
from simsearch.cli import main
from simsearch.errors import QueryError
from simsearch.formats import register_decoders

from .conftest import database, photo


@pytest.fixture
def indexed(tmp_path: Path, tiny_module: Path) -> tuple[Path, Path]:
    """A folder of 3 JPEGs, a PNG screenshot folder and a HEIC, indexed with one remembered exclude."""
    pics = tmp_path / "pics"
    for i in range(3):
        photo(pics / f"p{i}.jpg", seed=i)
    for i in range(2):
        photo(pics / "Screenshots" / f"s{i}.png", seed=10 + i)
    register_decoders()  # pillow-heif writes the HEIC
    photo(pics / "phone.heic", seed=20, fmt="HEIF")
    photo(pics / "skip.jpg", seed=30)
    store = tmp_path / "store"
    got = CliRunner().invoke(main, ["index", str(pics), "--store", str(store), "--model", str(tiny_module),
                                    "--exclude", "skip.jpg"])
    assert got.exit_code == 0, got.output
    return pics, store


def _paths(output: str) -> set[str]:
    return {Path(h["path"]).name for h in json.loads(output)}


def test_format_takes_extensions_and_names_in_any_case_and_refuses_unknown_ones(indexed: tuple[Path, Path]) -> None:
    pics, store = indexed
    runner = CliRunner()
    base = ["query", str(pics / "p0.jpg"), "--store", str(store), "-k", "10", "-o", "json"]
    for typed in ("JPEG", "jpg", "JPG", ".jpeg"):  # before: only Pillow's JPEG matched; jpg printed nothing
        got = runner.invoke(main, [*base, "--format", typed])
        assert got.exit_code == 0 and _paths(got.output) == {"p0.jpg", "p1.jpg", "p2.jpg"}, (typed, got.output)
    assert _paths(runner.invoke(main, [*base, "--format", "HEIC"]).output) == {"phone.heic"}
    assert _paths(runner.invoke(main, [*base, "--format", "png", "--format", "heif"]).output) == {
        "s0.png", "s1.png", "phone.heic"}
    bad = runner.invoke(main, [*base, "--format", "FOO"])
    assert bad.exit_code == 2 and "unknown format 'FOO'" in bad.output and "JPEG" in bad.output and "HEIF" in bad.output
    with simsearch.open(store) as s:  # the API and the HTTP filter take the same
        assert {Path(h.path).name for h in s.query(pics / "p0.jpg", k=10, where=ImageFilter(formats=("heic",)))} == {
            "phone.heic"}
        with pytest.raises(QueryError, match="unknown format 'FOO'"):
            ImageFilter(formats=("FOO",))


def test_reading_commands_never_create_a_store_or_a_catalog_file(indexed: tuple[Path, Path], tmp_path: Path) -> None:
    pics, _ = indexed
    runner = CliRunner()
    typo = tmp_path / "typo"
    served = runner.invoke(main, ["serve", "--store", str(typo)])  # before: made the store and served it empty
    assert served.exit_code == 1 and "no store at" in served.output and not typo.exists()
    other = tmp_path / "other.sqlite"
    for args in (["query", str(pics / "p0.jpg")], ["stats"], ["serve"]):
        got = runner.invoke(main, [*args, "--store", str(tmp_path / "s2"), "--db", f"sqlite:///{other}"])
        assert got.exit_code == 1 and "no catalog at" in got.output, (args, got.output)
        assert not other.exists() and not (tmp_path / "s2").exists()  # before: query made both


def test_an_empty_database_is_not_a_catalog_to_read(tmp_path: Path) -> None:
    for kind in ("sqlite", "postgresql"):
        try:
            with database(kind, tmp_path / kind) as url:
                if kind == "sqlite":
                    (tmp_path / kind).mkdir()
                    import sqlite3

                    sqlite3.connect(url.removeprefix("sqlite:///")).execute("CREATE TABLE other (x)").connection.close()
                with pytest.raises(simsearch.NotFoundError, match="holds no simsearch tables"):
                    simsearch.open(tmp_path / kind / "store", db=url)
                simsearch.open(tmp_path / kind / "store", db=url, create=True).close()  # index makes one
                simsearch.open(tmp_path / kind / "store", db=url).close()
        except pytest.skip.Exception:
            assert kind == "postgresql"


def test_remove_says_the_next_index_brings_them_back_and_how_to_exclude_them(indexed: tuple[Path, Path]) -> None:
    pics, store = indexed
    runner = CliRunner()
    got = runner.invoke(main, ["remove", str(pics / "Screenshots"), "--store", str(store)])
    assert got.exit_code == 0 and "removed 2 images" in got.output
    assert (f"simsearch index {pics} --exclude skip.jpg --exclude Screenshots" in got.output
            and "adds them again" in got.output)
    as_json = runner.invoke(main, ["remove", str(pics / "p1.jpg"), "--store", str(store), "--json"])
    assert json.loads(as_json.output) == {"removed": 1, "indexed_again_by": [
        {"path": str(pics / "p1.jpg"), "folder": str(pics), "exclude": ["skip.jpg", "p1.jpg"]}]}
    # the command it suggests keeps them out, and stats and config show what each folder leaves out
    follow = ["index", str(pics), "--store", str(store), "--exclude", "skip.jpg", "--exclude", "Screenshots",
              "--exclude", "p1.jpg"]
    assert runner.invoke(main, follow).exit_code == 0
    with simsearch.open(store) as s:
        assert s.stats().images == 3  # p0, p2, phone.heic
        assert s.stats().folder_options == {str(pics): {"exclude": ["skip.jpg", "Screenshots", "p1.jpg"],
                                                        "include_hidden": False}}
    stats = runner.invoke(main, ["stats", "--store", str(store)])
    assert f"{pics} (excluding skip.jpg, Screenshots, p1.jpg)" in stats.output
    config = runner.invoke(main, ["config", "--store", str(store)])
    assert f"{pics}  excludes: skip.jpg, Screenshots, p1.jpg" in config.output
    # the defaults in force, not "-" (before: `model -`)
    assert "https://tfhub.dev/google/imagenet/inception_v2/feature_vector/1  (default)" in config.output


def test_verbose_and_quiet_after_the_command_and_a_missing_checkpoint(indexed: tuple[Path, Path], tmp_path: Path) -> None:
    _, store = indexed
    runner = CliRunner()
    for flag in ("-v", "-q", "--verbose"):  # before: "No such option: -v"
        got = runner.invoke(main, ["stats", "--store", str(store), flag])
        assert got.exit_code == 0 and "images" in got.output, (flag, got.output)
    missing = runner.invoke(main, ["model", "import-slim", str(tmp_path / "nothere.tar.gz"), str(tmp_path / "out")])
    assert missing.exit_code == 1 and "not found" in missing.output and "TensorSliceReader" not in missing.output
    assert not (tmp_path / "out").exists()


def test_min_pixels_takes_the_page_s_shorthand_and_folders_lists_subfolders(indexed: tuple[Path, Path]) -> None:
    pics, store = indexed
    runner = CliRunner()
    base = ["query", str(pics / "p0.jpg"), "--store", str(store), "-k", "10", "-o", "json"]
    assert _paths(runner.invoke(main, [*base, "--min-pixels", "19200"]).output) == _paths(
        runner.invoke(main, [*base, "--min-pixels", "19.2k"]).output) != set()  # 160x120 photos
    assert json.loads(runner.invoke(main, [*base, "--min-pixels", "0.02M"]).output) == []
    bad = runner.invoke(main, [*base, "--min-pixels", "lots"])
    assert bad.exit_code == 2 and "not a number of pixels" in bad.output
    with simsearch.open(store) as s:
        assert s.photo_folders() == ([str(pics), str(pics / "Screenshots")], False)


def test_browse_get_and_group_members_are_results_like_hits(indexed: tuple[Path, Path]) -> None:
    """They came back as dicts where query() returns Hit objects."""
    pics, store = indexed
    with simsearch.open(store) as s:
        photos, total = s.browse(limit=2)
        assert total == 6 and all(isinstance(p, simsearch.Photo) for p in photos)
        assert s.get(photos[0].id) == photos[0] and photos[0].path.startswith(str(pics))
        hit = s.query(photos[0].id, k=1)[0]
        assert (hit.id, hit.path, hit.width, hit.taken_at) == (photos[0].id, photos[0].path, photos[0].width,
                                                                photos[0].taken_at)
        assert photos[0].to_dict()["path"] == photos[0].path  # what --json and the HTTP API print
        following, none = s.browse(after=simsearch.BrowseKey.of(photos[-1]), limit=10)
        assert none is None and {p.id for p in following}.isdisjoint({p.id for p in photos})
