"""`simsearch serve` as users run it, in its own process: the address it really listens on, and the options
that reach the app only through the command line (SIMSEARCH_TOKEN, --max-upload-mb, --cors-origin)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import simsearch

from .conftest import photo

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "env-token-1234"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> set[str]:
    """The local addresses (dotted IPv4, or 'ipv6') listening on this TCP port, read from /proc."""
    found = set()
    for table, family in (("/proc/net/tcp", "ipv4"), ("/proc/net/tcp6", "ipv6")):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]) if family == "ipv4" else "ipv6")
    return found


def _other_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


@pytest.fixture()
def served(tmp_path: Path, tiny_module: Path) -> Iterator[tuple[str, int]]:
    for i in range(3):
        photo(tmp_path / "photos" / f"p{i}.jpg", seed=i)
    with simsearch.open(tmp_path / "store", model=tiny_module, create=True) as store:
        store.index(tmp_path / "photos")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SIMSEARCH_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "simsearch", "serve", "--store", str(tmp_path / "store"),
                             "--port", str(port), "--max-upload-mb", "1", "--cors-origin", "https://photos.example"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the server did not answer in 2 minutes"
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield base, port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_listens_on_loopback_only_by_default(served: tuple[str, int]) -> None:
    _, port = served
    assert _listening(port) == {"127.0.0.1"}
    other = _other_address()
    if other is not None:  # the machine's own network address is refused
        with pytest.raises(OSError):
            socket.create_connection((other, port), timeout=2).close()


def test_token_from_the_environment_upload_limit_and_cors_origin(served: tuple[str, int], tmp_path: Path) -> None:
    base, _ = served
    assert httpx.post(f"{base}/api/index").status_code == 401
    assert httpx.post(f"{base}/api/index", headers={"Authorization": "Bearer wrong"}).status_code == 401
    started = httpx.post(f"{base}/api/index", headers={"Authorization": f"Bearer {TOKEN}"})
    assert started.status_code == 202  # SIMSEARCH_TOKEN reached the app

    big = httpx.post(f"{base}/api/query", files={"image": ("big.jpg", b"\xff" * (1024 * 1024 + 1), "image/jpeg")})
    assert big.status_code == 413  # --max-upload-mb 1
    small = httpx.post(f"{base}/api/query", files={"image": ("p.jpg", (tmp_path / "photos" / "p1.jpg").read_bytes(),
                                                               "image/jpeg")})
    assert small.status_code == 200 and small.json()[0]["path"] == str(tmp_path / "photos" / "p1.jpg")

    allowed = httpx.get(f"{base}/api/stats", headers={"Origin": "https://photos.example"})
    assert allowed.headers.get("access-control-allow-origin") == "https://photos.example"
    other = httpx.get(f"{base}/api/stats", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
