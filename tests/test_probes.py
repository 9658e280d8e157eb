"""Probes by URL (a real HTTP server on 127.0.0.1) and from standard input."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import simsearch
from simsearch.cli import main
from simsearch.embedder import HubEmbedder
from simsearch.probes import fetch_url

from .conftest import photo


@pytest.fixture()
def indexed(tmp_path: Path, tiny_embedder: HubEmbedder) -> Iterator[tuple[simsearch.Store, Path]]:
    for i in range(4):
        photo(tmp_path / "photos" / f"p{i}.jpg", seed=i)
    with simsearch.open(tmp_path / "store", model=tiny_embedder, create=True) as store:
        store.index(tmp_path / "photos")
        yield store, tmp_path / "photos"


@pytest.fixture()
def web(tmp_path: Path) -> Iterator[str]:
    """/good.jpg (a photo), /text (HTML), /huge (a 60 MB body); bound to 127.0.0.1 only."""
    good = photo(tmp_path / "served" / "good.jpg", seed=2).read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = {"/good.jpg": good, "/text": b"<html>not a photo</html>"}.get(self.path)
            if self.path == "/huge":
                self.send_response(200)
                self.end_headers()  # no Content-Length: the size limit must hold while reading
                for _ in range(60):
                    try:
                        self.wfile.write(b"\xff" * (1 << 20))
                    except OSError:
                        return
                return
            if self.path.startswith("/redirect?"):  # /redirect?URL: a 302 there
                self.send_response(302)
                self.send_header("Location", self.path.split("?", 1)[1])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path == "/drip":  # a body one byte every 0.2 s, for 60 s
                self.send_response(200)
                self.send_header("Content-Length", "300")
                self.end_headers()
                for _ in range(300):
                    try:
                        self.wfile.write(b"\xff")
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.2)
                return
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_url_probe_queries_like_the_file(indexed: tuple[simsearch.Store, Path], web: str) -> None:
    store, photos = indexed
    by_url = store.query(f"{web}/good.jpg", k=3)
    by_bytes = store.query((photos / "p2.jpg").read_bytes(), k=3)
    assert by_url[0].path == str(photos / "p2.jpg") and [h.id for h in by_url] == [h.id for h in by_bytes]
    with pytest.raises(simsearch.ImageError, match="not an image"):
        store.query(f"{web}/text")
    with pytest.raises(simsearch.ImageError, match="HTTP 404"):
        store.query(f"{web}/missing.jpg")


def test_url_limits_on_size_and_on_a_server_that_never_answers(web: str) -> None:
    with pytest.raises(simsearch.ImageError, match="over the limit of 1048576 bytes"):
        fetch_url(f"{web}/huge", max_bytes=1 << 20)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    try:
        t0 = time.monotonic()
        with pytest.raises(simsearch.ImageError, match="cannot fetch image"):
            fetch_url(f"http://127.0.0.1:{silent.getsockname()[1]}/x.jpg", timeout=1.0)
        assert time.monotonic() - t0 < 5
    finally:
        silent.close()


def test_cli_query_by_url_and_from_stdin(indexed: tuple[simsearch.Store, Path], web: str) -> None:
    store, photos = indexed
    args = ["--store", str(store.root), "-k", "2", "-o", "jsonl"]
    r = CliRunner().invoke(main, ["query", f"{web}/good.jpg", *args])
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 2 and lines[0]["path"] == str(photos / "p2.jpg")
    r = CliRunner().invoke(main, ["query", "-", "--store", str(store.root), "-k", "1", "-o", "paths"],
                           input=(photos / "p3.jpg").read_bytes())
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [str(photos / "p3.jpg")]
    empty = CliRunner().invoke(main, ["query", "-", "--store", str(store.root)], input=b"")
    assert empty.exit_code == 1 and "empty input" in empty.output


def test_the_http_api_searches_by_url_only_for_those_who_may_change_the_store(
        indexed: tuple[simsearch.Store, Path], web: str) -> None:
    from fastapi.testclient import TestClient

    from simsearch.server import create_app

    store, photos = indexed
    client = TestClient(create_app(store, token="s3cret", preload=False, allow_private_urls=True),
                        base_url="http://localhost")  # the test's web server is on loopback
    body = {"url": f"{web}/good.jpg", "k": 3}
    assert client.post("/api/query/url", json=body).status_code == 401  # the server reaching out is a privilege
    hits = client.post("/api/query/url", json=body, headers={"Authorization": "Bearer s3cret"})
    assert hits.status_code == 200 and hits.json()[0]["path"] == str(photos / "p2.jpg")
    for bad in ("file:///etc/passwd", "ftp://x/y.jpg", "/etc/passwd"):
        r = client.post("/api/query/url", json={"url": bad}, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 422 and "passwd" not in r.text
    r = client.post("/api/query/url", json={"url": f"{web}/text"}, headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 415


def _client(store: simsearch.Store, **options: object) -> object:
    from fastapi.testclient import TestClient

    from simsearch.server import create_app

    return TestClient(create_app(store, token="s3cret", preload=False, **options), base_url="http://localhost",
                      headers={"Authorization": "Bearer s3cret"})


def test_the_server_fetches_nothing_from_its_own_network_in_any_spelling(
        indexed: tuple[simsearch.Store, Path], web: str) -> None:
    store, _ = indexed
    client = _client(store)
    port = web.rsplit(":", 1)[1]
    for host in ("127.0.0.1", "localhost", "127.1", "2130706433", "0x7f000001", "0.0.0.0", "[::1]",
                 "[::ffff:127.0.0.1]", "10.0.0.1", "169.254.169.254", "[fe80::1]", "224.0.0.1"):
        r = client.post("/api/query/url", json={"url": f"http://{host}:{port}/good.jpg"})
        assert r.status_code == 422 and "not a public address" in r.json()["error"], (host, r.text)


def test_every_redirect_is_checked_again(indexed: tuple[simsearch.Store, Path], web: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """127.0.0.1 stands in for a public web server here: where it redirects is checked like the first hop."""
    store, _ = indexed
    monkeypatch.setattr("simsearch.probes.is_public", lambda address: address == "127.0.0.1")
    client = _client(store)
    port = web.rsplit(":", 1)[1]
    assert client.post("/api/query/url", json={"url": f"{web}/redirect?/good.jpg"}).status_code == 200
    for target in (f"http://127.0.0.2:{port}/good.jpg", f"http://2130706434:{port}/good.jpg",
                   f"http://[::1]:{port}/good.jpg"):
        r = client.post("/api/query/url", json={"url": f"{web}/redirect?{target}"})
        assert r.status_code == 422 and "not a public address" in r.json()["error"], target
    r = client.post("/api/query/url", json={"url": f"{web}/redirect?ftp://127.0.0.1/x.jpg"})
    assert r.status_code == 422 and "not http(s)" in r.json()["error"]
    with pytest.raises(simsearch.QueryError, match="not http"):
        fetch_url(f"{web}/redirect?file:///etc/passwd")  # the CLI's fetcher too


def test_one_deadline_covers_the_whole_fetch(web: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(simsearch.ImageError, match="did not arrive"):
        fetch_url(f"{web}/drip", timeout=1.5)  # a byte every 0.2 s: no single read ever waits long
    assert time.monotonic() - t0 < 3
    dripper = socket.socket()  # the status line and headers themselves, a byte at a time
    dripper.bind(("127.0.0.1", 0))
    dripper.listen(1)

    def drip() -> None:
        conn, _ = dripper.accept()
        with conn:
            for b in b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n" * 20:
                try:
                    conn.send(bytes([b]))
                except OSError:
                    return
                time.sleep(0.2)

    threading.Thread(target=drip, daemon=True).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(simsearch.ImageError, match="did not arrive"):
            fetch_url(f"http://127.0.0.1:{dripper.getsockname()[1]}/x.jpg", timeout=1.5)
        assert time.monotonic() - t0 < 3
    finally:
        dripper.close()


def test_answers_do_not_tell_an_open_port_from_a_closed_one(indexed: tuple[simsearch.Store, Path], web: str) -> None:
    store, _ = indexed
    client = _client(store, allow_private_urls=True)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: connection refused
    talker = socket.socket()  # an open port that speaks no HTTP
    talker.bind(("127.0.0.1", 0))
    talker.listen(4)

    def talk() -> None:
        while True:
            try:
                conn, _ = talker.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    threading.Thread(target=talk, daemon=True).start()
    try:
        errors = set()
        for url in (f"http://127.0.0.1:{closed_port}/x.jpg", f"http://127.0.0.1:{talker.getsockname()[1]}/x.jpg",
                    f"{web}/text", f"{web}/missing.jpg"):
            r = client.post("/api/query/url", json={"url": url})
            assert r.status_code == 415, (url, r.text)
            errors.add(r.json()["error"])
        assert len(errors) == 1 and "refused" not in errors.pop().lower()
    finally:
        talker.close()


def test_slow_fetches_never_hold_up_uploads(indexed: tuple[simsearch.Store, Path], web: str) -> None:
    from simsearch.server import FETCH_SLOTS

    store, photos = indexed
    client = _client(store, allow_private_urls=True, model_slots=1, url_timeout=4.0)
    answers: list[int] = []
    fetchers = [threading.Thread(target=lambda: answers.append(
        client.post("/api/query/url", json={"url": f"{web}/drip"}).status_code)) for _ in range(FETCH_SLOTS + 2)]
    for t in fetchers:
        t.start()
    time.sleep(1.0)  # every fetch slot now held by a drip
    t0 = time.monotonic()
    r = client.post("/api/query", files={"image": ("p.jpg", (photos / "p1.jpg").read_bytes())})
    assert r.status_code == 200 and time.monotonic() - t0 < 2.0
    for t in fetchers:
        t.join(30)
    assert sorted(answers) == [415] * FETCH_SLOTS + [503] * 2  # cut at the deadline; the rest told to retry
