"""The CLI through click's in-process runner: JSON output, exit codes, messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from simsearch.cli import main

from .conftest import photo


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    for i in range(6):
        photo(tmp_path / "photos" / f"p{i}.jpg", seed=i)
    (tmp_path / "photos" / "broken.jpg").write_text("nope")
    return tmp_path / "photos"


def _run(*args: str) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_index_stats_query_failures_remove(tmp_path: Path, folder: Path, tiny_module: Path) -> None:
    store = ["--store", str(tmp_path / "s")]
    r = _run("index", folder, *store, "--model", tiny_module, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert (report["added"], report["failed"]) == (6, 1)

    r = _run("index", folder, *store)
    assert r.exit_code == 0 and "0 added" in r.output and "7 unchanged" in r.output  # the broken file too

    stats = json.loads(_run("stats", *store, "--json").output)
    assert (stats["images"], stats["failed"], stats["dim"]) == (6, 1, 32)
    assert stats["model"] == str(tiny_module) and stats["input_size"] == [64, 64]

    hits = json.loads(_run("query", folder / "p2.jpg", *store, "-k", "3", "--json").output)
    assert len(hits) == 3 and hits[0]["path"] == str(folder / "p2.jpg") and hits[0]["score"] >= 0.999
    assert {"id", "path", "score"} <= set(hits[0])
    by_id = json.loads(_run("query", "--id", hits[1]["id"], *store, "--top", "1", "--json").output)
    assert by_id[0]["id"] == hits[1]["id"]
    text = _run("query", folder / "p2.jpg", *store, "-k", "2").output.splitlines()
    assert len(text) == 2 and text[0].endswith(str(folder / "p2.jpg"))

    fails = json.loads(_run("failures", *store, "--json").output)
    assert fails == [{**fails[0], "path": str(folder / "broken.jpg"), "reason": "not an image (format not recognised)"}]

    assert json.loads(_run("remove", folder / "p0.jpg", *store, "--json").output) == {"removed": 1}
    assert json.loads(_run("stats", *store, "--json").output)["images"] == 5


def test_errors_exit_1_with_a_message_and_no_traceback(tmp_path: Path, folder: Path, tiny_module: Path) -> None:
    r = CliRunner().invoke(main, ["query", str(folder / "p1.jpg"), "--store", str(tmp_path / "typo"),
                                  "--model", str(tiny_module)])
    assert r.exit_code == 1
    assert "Error: no store at" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "typo").exists()  # read-only commands never create a store
    for command in ("stats", "failures"):
        assert "no store at" in CliRunner().invoke(main, [command, "--store", str(tmp_path / "typo")]).output

    r = CliRunner().invoke(main, ["index", str(folder), "--store", str(tmp_path / "s"), "--model", str(tmp_path / "no-model")])
    assert r.exit_code == 1 and "does not exist" in r.output and "Traceback" not in r.output

    _run("index", folder, "--store", tmp_path / "s2", "--model", tiny_module)
    r = CliRunner().invoke(main, ["remove", str(folder / "nope.jpg"), "--store", str(tmp_path / "s2")])
    assert r.exit_code == 1 and "not in the store" in r.output


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert CliRunner().invoke(main, ["query"]).exit_code == 2
    assert CliRunner().invoke(main, ["query", "a.jpg", "--id", "3"]).exit_code == 2
    assert CliRunner().invoke(main, ["index", str(tmp_path / "missing")]).exit_code == 2
    assert CliRunner().invoke(main, ["query", str(tmp_path / "missing.jpg")]).exit_code == 2
    assert CliRunner().invoke(main, ["frobnicate"]).exit_code == 2


def test_help_shows_examples() -> None:
    r = CliRunner().invoke(main, ["index", "--help"])
    assert r.exit_code == 0 and "simsearch index ~/Pictures" in r.output and "--store" in r.output
