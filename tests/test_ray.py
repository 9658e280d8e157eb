"""Indexing on a real local Ray cluster: a head node and a second worker node (two raylets) on this machine.

The cluster is started with `ray start`, as users start theirs, and stopped with `ray stop` at the end
(which stops every Ray process on the machine). Without Ray the tests skip; under CI they fail instead.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import simsearch
from simsearch.config import Settings
from simsearch.embedder import HubEmbedder
from simsearch.images import load_image

from .conftest import database, photo

RAY = Path(sys.executable).with_name("ray")
NODE_ARGS = ["--num-cpus", "2", "--object-store-memory", str(400 << 20), "--disable-usage-stats"]


@dataclass(frozen=True)
class Cluster:
    address: str

    def worker_raylet(self) -> int:
        """The pid of the second node's raylet: killing it takes the node and its workers down."""
        import ray

        sockets = [n["RayletSocketName"] for n in ray.nodes()
                   if n["Alive"] and "node:__internal_head__" not in n["Resources"]]
        assert len(sockets) == 1, sockets
        want = f"--raylet_socket_name={sockets[0]}".encode()
        for proc in Path("/proc").iterdir():
            try:
                args = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if want in args and args[0].endswith(b"raylet"):
                return int(proc.name)
        raise AssertionError(f"no raylet process with {want!r}")

    def worker_node_id(self) -> str:
        import ray

        ids = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" not in n["Resources"]]
        assert len(ids) == 1, ids
        return ids[0]

    def add_worker_node(self) -> None:
        _ray("start", "--address", self.address, *NODE_ARGS)


def _ray(*args: str) -> None:
    r = subprocess.run([str(RAY), *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("Ray is not installed, and CI must run the Ray tests")
        pytest.skip("Ray is not installed: pip install 'simsearch[ray]'")
    port = _free_port()
    c = Cluster(f"127.0.0.1:{port}")
    # token authentication, as a cluster started by `ray start` has: RAY_AUTH_MODE=token (tests/conftest.py)
    _ray("start", "--head", "--port", str(port), "--include-dashboard", "false", *NODE_ARGS)
    try:
        c.add_worker_node()
        ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        yield c
    finally:
        ray.shutdown()
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=120)


def _snapshot(store: simsearch.Store) -> tuple[dict[int, str], np.ndarray]:
    ids = np.sort(store.catalog.vector_ids())
    paths = {i: r["path"] for i, r in store.catalog.records(ids).items()}
    return paths, store.catalog.vectors_for(ids, store.collection.vector_index.dim)


def test_ray_index_equals_the_single_machine_store(tmp_path: Path, cluster: Cluster, corel_images: Path,
                                                  tiny_module: Path) -> None:
    """The CLI with --ray and a PostgreSQL catalog gives the same store as a local run on SQLite."""
    with simsearch.open(tmp_path / "local", model=tiny_module, create=True) as local:
        local.index(corel_images)
        want_paths, want_vectors = _snapshot(local)
        want_hits = [(h.path, h.score) for h in local.query(corel_images / "q_3.jpg", k=10)]

    from simsearch.cli import main
    from click.testing import CliRunner

    with database("postgresql", tmp_path) as url:
        args = ["index", str(corel_images), "--store", str(tmp_path / "ray"), "--db", url, "--model", str(tiny_module),
                "--ray", cluster.address, "--shard-size", "64", "--json"]
        r = CliRunner().invoke(main, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        report = json.loads(r.stdout)  # stdout holds the JSON alone
        assert (report["added"], report["failed"]) == (1000, 0) and "ray" in report["timings"]
        with simsearch.open(tmp_path / "ray", db=url, create=False) as remote:
            paths, vectors = _snapshot(remote)
            assert paths == want_paths  # same ids for the same files
            np.testing.assert_allclose(vectors, want_vectors, atol=1e-5)
            hits = [(h.path, h.score) for h in remote.query(corel_images / "q_3.jpg", k=10)]
        assert [p for p, _ in hits] == [p for p, _ in want_hits]
        np.testing.assert_allclose([s for _, s in hits], [s for _, s in want_hits], atol=1e-5)
        assert not list((tmp_path / "ray" / "staging").rglob("*.parquet"))  # merged shards are cleaned up

        again = CliRunner().invoke(main, args, catch_exceptions=False)
        assert json.loads(again.stdout)["unchanged"] == 1000


def test_a_worker_node_killed_mid_run_loses_nothing(tmp_path: Path, cluster: Cluster, corel_images: Path,
                                                   inception_module: Path) -> None:
    """Full Inception V2 (slow enough to kill a node mid-run). The node is killed while it runs this run's
    work (a decoding task holds one of its CPUs, seen in the GCS's resource table), shards are still
    missing and the process still running; the node is then reported dead, and the one run completes
    the job all the same: the lost work was retried, not redone by a second run."""
    import ray
    # the GCS's own tables, read without the dashboard that Ray's state API needs
    from ray._private.state import available_resources_per_node

    store_dir = tmp_path / "store"
    victim, killed = cluster.worker_node_id(), False
    cmd = [sys.executable, "-m", "simsearch", "index", str(corel_images), "--store", str(store_dir),
           "--model", str(inception_module), "--ray", cluster.address, "--shard-size", "25", "--json"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while len(list(store_dir.glob("staging/*/*.parquet"))) < 3:  # a few shards in: the run is well under way
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no shard was written in 5 minutes"
            time.sleep(0.2)
        raylet = cluster.worker_raylet()
        while available_resources_per_node().get(victim, {}).get("CPU", 2.0) >= 2.0:  # idle: wait for a task
            if proc.poll() is not None or len(list(store_dir.glob("staging/*/*.parquet"))) >= 40:
                pytest.skip("the run ended before the node could be killed at work: no fault was exercised")
            time.sleep(0.005)
        os.kill(raylet, signal.SIGKILL)
        killed = True
        written = len(list(store_dir.glob("staging/*/*.parquet")))
        assert written < 40 and proc.poll() is None  # mid-run
        deadline = time.monotonic() + 60
        while any(n["NodeID"] == victim and n["Alive"] for n in ray.nodes()):
            assert time.monotonic() < deadline, "the killed node is still reported alive"
            time.sleep(0.5)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        if killed:
            cluster.add_worker_node()  # back to two nodes for whatever runs next
    assert proc.returncode == 0, f"the run did not survive the node's loss: {err[-3000:]}"
    report = json.loads(out)  # stdout holds the JSON alone, though Ray prints the lost node's errors
    assert report["added"] == 1000 and report["ray"]["shards"] == 40  # one run, every shard computed in it

    with simsearch.open(store_dir, create=False, settings=Settings()) as store:
        records = store.catalog.records(store.catalog.vector_ids())
        paths = sorted(r["path"] for r in records.values())
        assert paths == sorted(str(p) for p in corel_images.glob("*.jpg"))  # every photo, each once
        assert store.stats().failed == 0 and store.stats().vectors == 1000
        np.testing.assert_array_equal(np.sort(store.collection.vector_index.ids()), np.sort(store.catalog.vector_ids()))
        # vectors are the model's, whichever node (or retry) made them
        embedder = HubEmbedder(inception_module)
        sample = sorted(records)[::50]
        pixels = np.stack([load_image(records[i]["path"], (224, 224))[0] for i in sample])
        np.testing.assert_allclose(store.catalog.vectors_for(np.array(sample), 1024), embedder.embed(pixels),
                                   atol=1e-5)


def test_an_interrupted_run_resumes_from_the_shards_written(tmp_path: Path, cluster: Cluster, corel_images: Path,
                                                           tiny_module: Path) -> None:
    with simsearch.open(tmp_path / "local", model=tiny_module, create=True) as local:
        local.index(corel_images)
        want_paths, want_vectors = _snapshot(local)

    class Stop(Exception):
        pass

    def stop_after_first_batch(p: simsearch.Progress) -> None:
        if p.done:
            raise Stop

    options = simsearch.RayOptions(address=cluster.address, shard_size=50)
    settings = Settings(ann_threshold=900)  # the run that completes the store moves it, as a local run would
    with simsearch.open(tmp_path / "ray", model=tiny_module, create=True, settings=settings) as store:
        with pytest.raises(Stop):
            store.index(corel_images, progress=stop_after_first_batch, ray=options)
        committed = store.stats().images
        assert store.stats().index_kind == "flat"
        assert 0 < committed < 1000
        assert list((tmp_path / "ray" / "staging").rglob("*.parquet"))  # written shards outlive the driver
        report = store.index(corel_images, ray=options)
        assert report.added == 1000 - committed
        assert report.ray["reused_shards"] >= 1  # at least the shard being merged when it stopped
        assert report.ray["shards"] + report.ray["reused_shards"] <= 20
        assert store.stats().index_kind == "ivf-sq8"
        paths, vectors = _snapshot(store)
    assert paths == want_paths
    np.testing.assert_allclose(vectors, want_vectors, atol=1e-5)


def test_bad_files_and_folder_changes_are_handled_as_a_local_run_handles_them(tmp_path: Path, cluster: Cluster,
                                                            tiny_module: Path) -> None:
    folder = tmp_path / "photos"
    for i in range(6):
        photo(folder / f"p{i}.jpg", seed=i)
    photo(folder / os.fsdecode(b"caf\xe9.jpg"), seed=20)  # a name that is not UTF-8 (Arrow takes only UTF-8)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    data = (folder / "p0.jpg").read_bytes()
    (folder / "half.jpg").write_bytes(data[: len(data) // 3])

    runs = {"local": None, "ray": simsearch.RayOptions(address=cluster.address, shard_size=4)}
    reasons = {}
    for name, ray in runs.items():
        with simsearch.open(tmp_path / name, model=tiny_module, create=True) as store:
            report = store.index(folder, ray=ray)
            assert (report.added, report.failed) == (7, 3)
            reasons[name] = {Path(f.path).name: f.reason for f in store.failures()}
    assert reasons["ray"] == reasons["local"] and "truncated" in reasons["ray"]["half.jpg"]

    # then moves, copies, touches, edits and deletions: the same decisions on Ray as in this process
    (folder / "p1.jpg").rename(folder / "moved.jpg")
    (folder / "copy.jpg").write_bytes((folder / "p2.jpg").read_bytes())
    os.utime(folder / "p3.jpg", ns=(1, 1))
    photo(folder / "p4.jpg", seed=40)
    (folder / "p5.jpg").unlink()
    (folder / "notes.jpg").unlink()
    photo(folder / "empty.jpg", seed=50)
    results = {}
    for name, ray in runs.items():
        with simsearch.open(tmp_path / name, model=tiny_module, create=True) as store:
            r = store.index(folder, ray=ray)
            results[name] = ((r.added, r.updated, r.moved, r.removed, r.unchanged, r.failed), _snapshot(store))
    assert results["ray"][0] == results["local"][0] == (2, 1, 1, 2, 5, 0)
    assert results["ray"][1][0] == results["local"][1][0]  # same ids for the same paths
    np.testing.assert_allclose(results["ray"][1][1], results["local"][1][1], atol=1e-5)


@pytest.mark.parametrize("how", ["auto", "local"])
def test_ray_auto_and_local_from_the_command_line(tmp_path: Path, cluster: Cluster, tiny_module: Path, how: str) -> None:
    """`--ray` alone finds the cluster through RAY_ADDRESS; `--ray local` starts a one-machine cluster of
    its own (in a fresh process, as users run it)."""
    for i in range(5):
        photo(tmp_path / "photos" / f"p{i}.jpg", seed=i)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    if how == "auto":
        env["RAY_ADDRESS"] = cluster.address
    args = ["--ray"] if how == "auto" else ["--ray", "local"]
    r = subprocess.run([sys.executable, "-m", "simsearch", "index", str(tmp_path / "photos"), "--store",
                        str(tmp_path / "store"), "--model", str(tiny_module), *args, "--shard-size", "2", "--json"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["added"] == 5 and report["ray"]["shards"] == 3
