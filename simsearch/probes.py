"""Probe images from where people have them: an http(s) URL, or standard input.

A URL is fetched by hand, one hop at a time, so that every hop is checked before anything is sent:
http(s) only, at most MAX_REDIRECTS redirects, and, where the caller asks (the server always does unless
told otherwise), no hop to an address that is not public: loopback, private, link-local, multicast,
unspecified or reserved, in IPv4 and IPv6 (mapped forms included), whatever spelling the URL used
(`127.1`, `2130706433`, `localhost`). The connection goes to the very address that was checked, so a
name that resolves elsewhere the second time (DNS rebinding) gains nothing. One deadline covers the
whole fetch: resolving, connecting, redirects, headers and body; at the deadline the socket is shut,
so a server that drips a byte at a time is cut off. The body is bounded in size, then decoded like any
probe, so content that is not an image fails as such.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

from .errors import ImageError, QueryError
from .files import read_bounded

MAX_PROBE_BYTES = 50 * 1024 * 1024
URL_TIMEOUT_S = 20.0
MAX_REDIRECTS = 5
_RESOLVER = ThreadPoolExecutor(4, thread_name_prefix="simsearch-resolve")  # getaddrinfo has no timeout of its own


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def is_public(address: str) -> bool:
    """A global unicast address: not loopback, private, link-local, multicast, unspecified or reserved."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and (ip.ipv4_mapped or ip.sixtofour):
        ip = ip.ipv4_mapped or ip.sixtofour  # type: ignore[assignment]
    return ip.is_global and not ip.is_multicast


def fetch_url(url: str, *, max_bytes: int = MAX_PROBE_BYTES, timeout: float = URL_TIMEOUT_S,
              public_only: bool = False) -> bytes:
    """The body of an http(s) URL, at most max_bytes, within timeout seconds in all. public_only: every hop
    must resolve to public addresses alone (QueryError otherwise, naming no port or reason from the network)."""
    if not is_url(url):
        raise QueryError(f"not an http(s) URL: {url}")
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        status, location, body = _hop(url, deadline, timeout, max_bytes, public_only)
        if location is None:
            if status != 200:
                raise ImageError(url, f"cannot fetch image: HTTP {status}")
            return body
        url = urljoin(url, location)
        if not is_url(url):
            raise QueryError(f"the URL redirects to {url.split(':', 1)[0]}:, not http(s): refused")
    raise ImageError(url, f"cannot fetch image: more than {MAX_REDIRECTS} redirects")


def _hop(url: str, deadline: float, timeout: float, max_bytes: int,
         public_only: bool) -> tuple[int, str | None, bytes]:
    """One request: (status, redirect location or None, body of a 200)."""
    parts = urlsplit(url)
    host, https = parts.hostname, parts.scheme == "https"
    if not host:
        raise QueryError(f"no host in URL: {url}")
    try:
        port = parts.port or (443 if https else 80)
    except ValueError as exc:
        raise QueryError(f"bad port in URL: {url}") from exc
    address = _resolve(url, host, port, deadline, timeout, public_only)
    conn = (_PinnedHTTPS(host, port, address, context=ssl.create_default_context()) if https
            else _PinnedHTTP(host, port, address))
    conn.timeout = max(0.01, deadline - time.monotonic())
    guard = threading.Timer(max(0.0, deadline - time.monotonic()), conn.cut)  # the whole fetch, not each read
    guard.daemon = True
    guard.start()
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", path, headers={"User-Agent": "simsearch", "Accept": "image/*"})
        response = conn.getresponse()
        if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
            return response.status, response.getheader("Location"), b""
        if response.status != 200:
            return response.status, None, b""
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise ImageError(url, f"image at URL is {int(length)} bytes, over the limit of {max_bytes}")
        return 200, None, read_bounded(response, url, max_bytes, what="image", deadline=deadline)
    except (OSError, http.client.HTTPException) as exc:
        if time.monotonic() >= deadline - 0.01:
            raise ImageError(url, f"cannot fetch image: it did not arrive within {timeout:g} s") from exc
        raise ImageError(url, "cannot fetch image: the connection failed") from exc
    finally:
        guard.cancel()
        conn.close()


def _resolve(url: str, host: str, port: int, deadline: float, timeout: float, public_only: bool) -> str:
    """The address to connect to; with public_only, every address the name has must be public."""
    try:
        found = _RESOLVER.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM).result(
            max(0.01, deadline - time.monotonic()))
    except FutureTimeout as exc:
        raise ImageError(url, f"cannot fetch image: it did not arrive within {timeout:g} s") from exc
    except (OSError, UnicodeError) as exc:
        raise ImageError(url, "cannot fetch image: the connection failed") from exc
    addresses = [info[4][0] for info in found]
    if public_only and not all(is_public(a) for a in addresses):
        raise QueryError(f"the URL's host {host} is not a public address: this server fetches only from the "
                         f"internet (start it with --allow-private-urls to allow local and private addresses)")
    return addresses[0]


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the address that was checked, whatever the name resolves to now; Host stays the name."""

    def __init__(self, host: str, port: int, address: str, **kwargs: object) -> None:
        super().__init__(host, port, **kwargs)  # type: ignore[arg-type]
        self.address = address
        self._cut = False
        self.raw: socket.socket | None = None  # kept: http.client drops self.sock once a response will close

    def _open(self) -> socket.socket:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        if self._cut:
            sock.close()
            raise TimeoutError("deadline")
        return sock

    def connect(self) -> None:
        self.sock = self.raw = self._open()

    def cut(self) -> None:
        """The deadline: shut the socket, so whatever read or write is blocked on it ends now."""
        self._cut = True
        sock = self.raw
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _PinnedHTTPS(_PinnedHTTP):
    default_port = 443

    def __init__(self, host: str, port: int, address: str, *, context: ssl.SSLContext) -> None:
        super().__init__(host, port, address)
        self.context = context

    def connect(self) -> None:
        self.sock = self.raw = self.context.wrap_socket(self._open(), server_hostname=self.host)


def read_stdin(stream: BinaryIO, *, max_bytes: int = MAX_PROBE_BYTES) -> bytes:
    """A probe piped in (`simsearch query - < photo.jpg`)."""
    data = read_bounded(stream, "standard input", max_bytes, what="input")
    if not data:
        raise ImageError("standard input", "empty input: pipe an image in, e.g. `simsearch query - < photo.jpg`")
    return data
