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
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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
    client = TestClient(create_app(store, token="s3cret", preload=False), base_url="http://localhost")
    body = {"url": f"{web}/good.jpg", "k": 3}
    assert client.post("/api/query/url", json=body).status_code == 401  # the server reaching out is a privilege
    hits = client.post("/api/query/url", json=body, headers={"Authorization": "Bearer s3cret"})
    assert hits.status_code == 200 and hits.json()[0]["path"] == str(photos / "p2.jpg")
    for bad in ("file:///etc/passwd", "ftp://x/y.jpg", "/etc/passwd"):
        r = client.post("/api/query/url", json={"url": bad}, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 422 and "passwd" not in r.text
    r = client.post("/api/query/url", json={"url": f"{web}/text"}, headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 415
