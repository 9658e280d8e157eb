"""Hostile files, hostile requests and hostile web pages: each case here broke something before its fix."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import simsearch
from simsearch.cli import main
from simsearch.config import Settings
from simsearch.embedder import HubEmbedder
from simsearch.server import create_app

from .conftest import photo

TOKEN = "s3cret-token"


def _finishes(fn: object, seconds: float = 60.0) -> object:
    """Run fn in a thread; fail (instead of hanging the suite) if it does not return in time."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["value"] = fn()  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001 (handed back to the test)
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s"
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out.get("value")


@pytest.fixture()
def hostile(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    for i in range(3):
        photo(folder / f"p{i}.jpg", seed=i)
    os.mkfifo(folder / "pipe.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    return folder


def test_fifos_and_device_links_are_refused_not_read(tmp_path: Path, hostile: Path, tiny_embedder: HubEmbedder) -> None:
    with simsearch.open(tmp_path / "store", model=tiny_embedder, create=True) as store:
        report = _finishes(lambda: store.index(hostile))
        assert (report.added, report.failed) == (3, 2)  # type: ignore[union-attr]
        reasons = {Path(f.path).name: f.reason for f in store.failures()}
        assert "named pipe" in reasons["pipe.jpg"] and "character device" in reasons["zero.jpg"]
        for probe in ("pipe.jpg", "zero.jpg"):  # as probes: the same rules, at once
            with pytest.raises(simsearch.ImageError, match="not a regular file"):
                _finishes(lambda: store.query(str(hostile / probe)), 10)


def test_a_file_over_the_size_limit_is_a_failure(tmp_path: Path, tiny_embedder: HubEmbedder) -> None:
    photo(tmp_path / "photos" / "big.png", seed=1, size=(400, 400))
    with simsearch.open(tmp_path / "store", model=tiny_embedder, create=True,
                        settings=Settings(max_file_bytes=10_000)) as store:
        assert store.index(tmp_path / "photos").failed == 1
        assert "over the limit of 10000 bytes" in store.failures()[0].reason


def test_two_first_writers_create_one_store(tmp_path: Path, tiny_embedder: HubEmbedder) -> None:
    for trial in range(5):
        barrier, errors = threading.Barrier(6), []

        def make(root: Path = tmp_path / f"new{trial}") -> None:
            barrier.wait()
            try:
                simsearch.open(root, model=tiny_embedder, create=True).close()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=make) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []


@pytest.fixture()
def served(tmp_path: Path, tiny_embedder: HubEmbedder) -> Iterator[tuple[simsearch.Store, Path]]:
    folder = tmp_path / "photos"
    for i in range(4):
        photo(folder / f"p{i}.jpg", seed=i)
    (tmp_path / "secret.txt").write_text("root:x:0:0:the secret")
    with simsearch.open(tmp_path / "store", model=tiny_embedder, create=True) as store:
        store.index(folder)
        yield store, folder


def _client(store: simsearch.Store, **kw: object) -> TestClient:
    return TestClient(create_app(store, preload=False, **kw), base_url="http://localhost",  # type: ignore[arg-type]
                      raise_server_exceptions=False)


BAD_INPUTS = [
    "/api/images/99999999999999999999", "/api/images/99999999999999999999/file",
    "/api/images/9223372036854775808/thumbnail", "/api/images/0", "/api/images/-1/file",
    "/api/query?id=99999999999999999999", "/api/query?id=1&min_pixels=99999999999999999999",
    "/api/query?id=1&folder=%00", "/api/query?id=1&format=JP%00EG", "/api/query?id=1&k=0",
    "/api/query?id=1&taken_from=99999-01-01", "/api/query?id=abc",
]


@pytest.mark.parametrize("url", BAD_INPUTS)
def test_inputs_out_of_range_are_4xx_never_500(served: tuple[simsearch.Store, Path], url: str) -> None:
    r = _client(served[0]).get(url)
    assert 400 <= r.status_code < 500, (url, r.status_code, r.text)
    assert r.json()["error"]


def test_vector_query_nul_folder_and_huge_vector(served: tuple[simsearch.Store, Path]) -> None:
    client = _client(served[0])
    r = client.post("/api/query/vector", params={"folder": "\x00"}, json={"vector": [0.1] * 32})
    assert r.status_code == 422
    huge = client.post("/api/query/vector", json={"vector": [0.5] * 1_000_000})
    assert huge.status_code == 422 and len(huge.content) < 2000  # the input is not echoed back


def test_a_photo_swapped_for_a_link_is_not_served(served: tuple[simsearch.Store, Path], tmp_path: Path) -> None:
    store, folder = served
    client = _client(store)
    by_path = {h.path: h.id for h in store.query(str(folder / "p0.jpg"), k=4)}
    target = folder / "p1.jpg"
    assert client.get(f"/api/images/{by_path[str(target)]}/file").status_code == 200
    target.unlink()
    target.symlink_to(tmp_path / "secret.txt")  # out of the indexed folder
    for what in ("file", "thumbnail"):
        r = client.get(f"/api/images/{by_path[str(target)]}/{what}")
        assert r.status_code == 404 and "secret" not in r.text and "inside the indexed folders" in r.text
    other = folder / "p2.jpg"
    other.unlink()
    other.symlink_to(folder / "p3.jpg")  # a link inside the folder, to another photo
    r = client.get(f"/api/images/{by_path[str(other)]}/file")
    assert r.status_code == 409 and "changed since it was indexed" in r.text


def test_host_header_allowlist_stops_dns_rebinding(served: tuple[simsearch.Store, Path]) -> None:
    client = _client(served[0])
    assert client.get("/api/images/1/file", headers={"Host": "evil.example"}).status_code == 400
    assert client.get("/api/images/1/file", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    named = _client(served[0], extra_hosts=["photos.lan"])
    assert named.get("/api/stats", headers={"Host": "photos.lan:8000"}).status_code == 200


def test_other_web_pages_cannot_start_jobs(served: tuple[simsearch.Store, Path]) -> None:
    client = _client(served[0])
    assert client.post("/api/index", headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.post("/api/index", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert client.post("/api/index", headers={"Origin": "http://localhost"}).status_code == 202  # the page itself


def test_the_bearer_scheme_is_required(served: tuple[simsearch.Store, Path]) -> None:
    client = _client(served[0], token=TOKEN)
    assert client.post("/api/index", headers={"Authorization": TOKEN}).status_code == 401
    assert client.post("/api/index", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.post("/api/index", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 202


def test_a_network_address_without_a_token_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SIMSEARCH_TOKEN", raising=False)
    r = CliRunner().invoke(main, ["serve", "--store", str(tmp_path / "s"), "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "--insecure-no-token" in r.output
    ran: list[object] = []
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: ran.append(k))
    r = CliRunner().invoke(main, ["serve", "--store", str(tmp_path / "s"), "--host", "0.0.0.0", "--insecure-no-token", "--create"])
    assert r.exit_code == 0 and "warning: serving on 0.0.0.0 without a token" in r.output and ran


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_uploads_decode_under_a_tighter_pixel_limit(served: tuple[simsearch.Store, Path]) -> None:
    client = _client(served[0])
    t0 = time.monotonic()
    r = client.post("/api/query", files={"image": ("bomb.png", _png_claiming(13_000, 13_000), "image/png")})
    assert r.status_code == 415 and "13000x13000" in r.text and "over the limit of 50 megapixels" in r.text
    assert time.monotonic() - t0 < 5
    ok = client.post("/api/query", files={"image": ("p.jpg", (served[1] / "p0.jpg").read_bytes(), "image/jpeg")})
    assert ok.status_code == 200


def test_a_slow_upload_is_cut_off(served: tuple[simsearch.Store, Path]) -> None:
    import uvicorn

    app = create_app(served[0], preload=False, body_timeout=1.5)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /api/query HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                      b"Content-Length: 1000\r\n\r\n")
            t0, answer = time.monotonic(), b""
            s.settimeout(0.5)
            while time.monotonic() - t0 < 8 and not answer:
                try:
                    s.sendall(b"x")  # one byte every half second
                    answer = s.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    break
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 5, answer[:200]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_requests_never_500_and_never_serve_files_outside_the_index(
        data: st.DataObject, fuzz_client: tuple[TestClient, set[str]]) -> None:
    client, indexed = fuzz_client
    text = st.text(max_size=40)
    number = st.one_of(st.integers(min_value=-2**70, max_value=2**70), st.floats(allow_nan=True), text)
    kind = data.draw(st.sampled_from(["image", "file", "thumb", "query", "vector", "upload", "path"]))
    if kind in ("image", "file", "thumb"):
        suffix = {"image": "", "file": "/file", "thumb": "/thumbnail"}[kind]
        r = client.get(f"/api/images/{quote(str(data.draw(number)), safe='')}{suffix}")
    elif kind == "query":
        params = {k: data.draw(number if k in ("id", "k", "min_pixels") else text)
                  for k in data.draw(st.sets(st.sampled_from(["id", "k", "folder", "format", "taken_from",
                                                              "taken_until", "min_pixels"])))}
        r = client.get("/api/query", params=params)
    elif kind == "vector":
        body = data.draw(st.one_of(st.dictionaries(st.sampled_from(["vector", "k", "x"]),
                                                   st.one_of(number, st.lists(st.floats(), max_size=40))),
                                   st.lists(st.integers(), max_size=3)))
        r = client.post("/api/query/vector", content=json.dumps(body), headers={"Content-Type": "application/json"})
    elif kind == "upload":
        r = client.post("/api/query", files={"image": ("x", data.draw(st.binary(max_size=200)))},
                        data={"k": str(data.draw(number))})
    else:
        r = client.get("/" + data.draw(st.sampled_from(["", "static/", "api/images/", "..%2F..%2Fetc%2Fpasswd", "docs"]))
                       + quote(data.draw(text), safe="/"))
    assert r.status_code < 500, (kind, r.status_code, r.text[:300])
    if kind == "file" and r.status_code == 200:
        assert hashlib.sha256(r.content).hexdigest() in indexed


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory, tiny_embedder: HubEmbedder) -> Iterator[tuple[TestClient, set[str]]]:
    root = tmp_path_factory.mktemp("fuzz")
    files = [photo(root / "photos" / f"p{i}.jpg", seed=i) for i in range(3)]
    with simsearch.open(root / "store", model=tiny_embedder, create=True) as store:
        store.index(root / "photos")
        client = TestClient(create_app(store, preload=False), base_url="http://localhost",
                            raise_server_exceptions=False)
        yield client, {hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_every_response_forbids_framing_and_sniffing(tmp_path: Path, tiny_embedder: HubEmbedder) -> None:
    """A page elsewhere that frames the duplicates view could lure clicks on its buttons (clickjacking)."""
    photo(tmp_path / "photos" / "a.jpg", seed=1)
    with simsearch.open(tmp_path / "store", model=tiny_embedder, create=True) as store:
        store.index(tmp_path / "photos")
        client = TestClient(create_app(store, preload=False), base_url="http://localhost")
        responses = [client.get("/"), client.get("/healthz"), client.get("/api/images/1/thumbnail"),
                     client.get("/api/images/999/file"), client.get("/", headers={"Host": "evil.example"}),
                     client.post("/api/query/vector", json={"vector": [1.0]})]
        for r in responses:
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"], r.request.url
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
        assert "default-src 'self'" in responses[0].headers["content-security-policy"]  # the page loads nothing else


def test_connections_that_never_finish_their_headers_lock_nobody_out(tmp_path: Path, tiny_embedder: HubEmbedder) -> None:
    """200 clients that open a connection and send half a request line: /healthz still answers at once, and
    the half-open connections are closed at the header deadline (uvicorn's own limit of 128 had answered
    every request 503 for as long as they stayed)."""
    import uvicorn

    from simsearch.transport import CONCURRENCY, server_config

    with simsearch.open(tmp_path / "store", model=tiny_embedder, create=True) as store:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(server_config(create_app(store, preload=False), "127.0.0.1", port, header_timeout=2.0))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        stalled = []
        try:
            for _ in range(200):
                c = socket.create_connection(("127.0.0.1", port), timeout=5)
                c.sendall(b"GET /healthz HTTP/1.1\r\nHost: local")  # and never the rest
                stalled.append(c)
            assert len(stalled) > CONCURRENCY
            t0 = time.monotonic()
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                    c.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    assert c.recv(100).startswith(b"HTTP/1.1 200"), "healthz not answered"
            assert time.monotonic() - t0 < 2.0
            time.sleep(2.5)  # past the header deadline: the server has closed every stalled connection
            for c in stalled:
                c.settimeout(2)
                assert c.recv(100) == b""
        finally:
            for c in stalled:
                c.close()
            server.should_exit = True
            thread.join(10)


def test_far_dates_huge_cursors_and_link_loops_are_clear_errors_not_500s(tmp_path: Path,
                                                                        tiny_module: Path) -> None:
    import base64

    photo(tmp_path / "photos" / "a.jpg", seed=1)
    photo(tmp_path / "photos" / "b.jpg", seed=2)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)  # a link to itself
    store = ["--store", str(tmp_path / "store")]
    runner = CliRunner()
    assert runner.invoke(main, ["index", str(tmp_path / "photos"), *store, "--model", str(tiny_module)]).exit_code == 0
    probe = str(tmp_path / "photos" / "a.jpg")
    r = runner.invoke(main, ["query", probe, *store, "--taken-until", "9999-12-31"])
    assert r.exit_code == 0 and r.exception is None, r.output
    for args in (["query", probe, *store, "--folder", str(loop)], ["remove", str(loop), *store]):
        r = runner.invoke(main, args)
        assert r.exit_code in (1, 2) and isinstance(r.exception, SystemExit), r.output
        assert "loop" in r.output and "Traceback" not in r.output
    with simsearch.open(tmp_path / "store") as s:
        client = TestClient(create_app(s, preload=False), base_url="http://localhost")
        assert client.get("/api/photos", params={"taken_until": "9999-12-31"}).json()["total"] == 0  # undated
        assert client.get("/api/query", params={"id": 1, "taken_until": "9999-12-31"}).status_code == 200
        for raw in (f"|{2**64}|1", f"|1|{2**64}", f"|{-2**64}|1", "|1|-1"):
            cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
            r = client.get("/api/photos", params={"cursor": cursor})
            assert r.status_code == 422 and "cursor" in r.json()["error"], raw
        for where in ({"folder": str(loop)}, {"folder": str(loop), "id": 1}):
            r = client.get("/api/query" if "id" in where else "/api/photos", params=where)
            assert r.status_code == 422 and "loop" in r.json()["error"].lower(), r.text
