"""The CLI through click's in-process runner: JSON output, exit codes, messages."""

from __future__ import annotations

import csv
import io
import json
import shlex
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

    probe = tmp_path / "probe.jpg"  # a copy outside the store: the model runs on it (an indexed path would
    probe.write_bytes((folder / "p2.jpg").read_bytes())  # be answered with its stored vector)
    hits = json.loads(_run("query", probe, *store, "-k", "3", "--json").output)
    assert len(hits) == 3 and hits[0]["path"] == str(folder / "p2.jpg") and hits[0]["score"] >= 0.999
    assert hits[1]["score"] < 0.999
    assert {"id", "path", "score"} <= set(hits[0])
    by_id = json.loads(_run("query", "--id", hits[1]["id"], *store, "--top", "1", "--json").output)
    assert by_id[0]["id"] == hits[1]["id"]
    text = _run("query", folder / "p2.jpg", *store, "-k", "2").output.splitlines()
    assert len(text) == 2 and text[0].endswith(str(folder / "p2.jpg"))

    fails = json.loads(_run("failures", *store, "--json").output)
    assert fails == [{**fails[0], "path": str(folder / "broken.jpg"), "reason": "not an image (format not recognised)"}]

    assert json.loads(_run("remove", folder / "p0.jpg", *store, "--json").output)["removed"] == 1
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


def test_the_hint_after_failures_runs_as_printed(tmp_path: Path, folder: Path, tiny_module: Path) -> None:
    r = CliRunner().invoke(main, ["index", str(folder), "--store", str(tmp_path / "s"), "--model", str(tiny_module)])
    assert r.exit_code == 0, r.output
    hint = next(line for line in r.stderr.splitlines() if "could not be indexed" in line)
    command = shlex.split(hint.split("`")[1])
    assert command[:2] == ["simsearch", "failures"] and "--store" in command
    again = CliRunner().invoke(main, command[1:])
    assert again.exit_code == 0 and "broken.jpg: not an image" in again.stdout


def test_a_failed_first_run_leaves_no_store_behind(tmp_path: Path, folder: Path) -> None:
    r = CliRunner().invoke(main, ["index", str(folder), "--store", str(tmp_path / "s"), "--model", str(tmp_path / "no-model")])
    assert r.exit_code == 1 and "does not exist" in r.output
    assert not (tmp_path / "s").exists()
    assert "no store at" in CliRunner().invoke(main, ["stats", "--store", str(tmp_path / "s")]).output


def test_index_without_a_folder_updates_every_folder_of_the_store(tmp_path: Path, folder: Path, tiny_module: Path) -> None:
    other = tmp_path / "more"
    photo(other / "q.jpg", seed=20)
    store = ["--store", str(tmp_path / "s")]
    _run("index", folder, *store, "--model", tiny_module)
    _run("index", other, *store)
    photo(other / "q2.jpg", seed=21)
    (folder / "p0.jpg").unlink()
    reports = json.loads(_run("index", *store, "--json").stdout)
    assert [(r["folder"], r["added"], r["removed"]) for r in reports] == [(str(other), 1, 0), (str(folder), 0, 1)]  # sorted
    assert CliRunner().invoke(main, ["index", *store, "--exclude", "x"]).exit_code == 2  # excludes need a FOLDER


def test_output_formats_and_conflicting_choices(tmp_path: Path, folder: Path, tiny_module: Path) -> None:
    store = ["--store", str(tmp_path / "s")]
    _run("index", folder, *store, "--model", tiny_module)
    probe = str(folder / "p2.jpg")
    paths = _run("query", probe, *store, "-k", "3", "-o", "paths").stdout.splitlines()
    rows = list(csv.DictReader(io.StringIO(_run("query", probe, *store, "-k", "3", "-o", "csv").stdout)))
    jsonl = [json.loads(line) for line in _run("query", probe, *store, "-k", "3", "-o", "jsonl").stdout.splitlines()]
    assert paths[0] == probe and [r["path"] for r in rows] == paths == [h["path"] for h in jsonl]
    assert [json.loads(line)["reason"] for line in _run("failures", *store, "-o", "jsonl").stdout.splitlines()] == \
        ["not an image (format not recognised)"]
    for args in (["query", probe, "--json", "-o", "csv"], ["duplicates", "--json", "--csv"], ["failures", "--json", "-o", "paths"]):
        r = CliRunner().invoke(main, [*args, *store])
        assert r.exit_code == 2 and "choose one output format" in r.output


def test_quiet_and_verbose(tmp_path: Path, folder: Path, tiny_module: Path) -> None:
    quiet = CliRunner().invoke(main, ["-q", "index", str(folder), "--store", str(tmp_path / "s"), "--model", str(tiny_module)])
    assert quiet.exit_code == 0 and "indexing" not in quiet.stderr and "compiling" not in quiet.stderr
    (tmp_path / "s" / "index.faiss").unlink()
    loud = CliRunner().invoke(main, ["stats", "--store", str(tmp_path / "s")])
    assert "rebuilt vector index" in loud.stderr  # the library's info lines reach the user by default


def test_every_option_read_from_the_environment_says_so() -> None:
    for command, env in [("index", ["SIMSEARCH_STORE", "SIMSEARCH_MODEL", "SIMSEARCH_DB", "SIMSEARCH_RUNTIME"]),
                         ("query", ["SIMSEARCH_STORE", "SIMSEARCH_MODEL", "SIMSEARCH_DB", "SIMSEARCH_RUNTIME"]),
                         ("serve", ["SIMSEARCH_STORE", "SIMSEARCH_DB", "SIMSEARCH_TOKEN"]),
                         ("watch", ["SIMSEARCH_STORE"])]:
        text = " ".join(CliRunner().invoke(main, [command, "--help"]).output.split())
        assert all(f"Env: {e}" in text for e in env), (command, text)


def test_the_config_file_sets_defaults_and_the_environment_wins(tmp_path: Path, folder: Path, tiny_module: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'store = "{tmp_path / "from-config"}"\nmodel = "{tiny_module}"\nexclude = ["p1.jpg"]\n')
    monkeypatch.setenv("SIMSEARCH_CONFIG", str(config))
    monkeypatch.delenv("SIMSEARCH_STORE", raising=False)
    report = json.loads(_run("index", folder, "--json").stdout)
    assert report["added"] == 5 and (tmp_path / "from-config" / "catalog.sqlite").exists()  # p1 excluded
    shown = json.loads(_run("config", "--json").stdout)
    assert shown["config_file"] == str(config) and shown["settings"]["store"] == str(tmp_path / "from-config")
    monkeypatch.setenv("SIMSEARCH_STORE", str(tmp_path / "from-env"))
    assert "no store at" in CliRunner().invoke(main, ["stats"]).output and str(tmp_path / "from-env") in \
        CliRunner().invoke(main, ["stats"]).output
    config.write_text('stor = "typo"\n')
    r = CliRunner().invoke(main, ["stats"])
    assert r.exit_code == 1 and "unknown setting 'stor'" in r.output


def test_ray_option_errors_are_immediate_and_leave_no_store(tmp_path: Path, folder: Path, tiny_module: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import time

    store = ["--store", str(tmp_path / "s"), "--model", str(tiny_module)]
    alone = _run("index", folder, *store, "--staging", str(tmp_path / "st"))
    assert alone.exit_code == 2 and "--staging, --shard-size and --actors go with --ray" in alone.output
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.monotonic()
    refused = _run("index", folder, *store, "--ray", f"127.0.0.1:{port}")
    assert refused.exit_code == 1 and f"cannot reach a Ray cluster at 127.0.0.1:{port}: Connection refused" in refused.output
    assert time.monotonic() - t < 30  # Ray alone retries such an address for minutes
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")  # --ray with no value: auto, which reads RAY_ADDRESS
    auto = _run("index", folder, *store, "--ray")
    assert auto.exit_code == 1 and f"cannot reach a Ray cluster at 127.0.0.1:{port}" in auto.output
    bad = _run("index", folder, *store, "--ray", "headnode")
    assert bad.exit_code == 1 and "'headnode' is not HOST:PORT, 'auto' or 'local'" in bad.output
    assert not (tmp_path / "s").exists()  # nothing was made for a run that could not start
