"""Probe images from where people have them: an http(s) URL, or standard input.

A URL is fetched with a time limit on the connection and on every read, and a size limit on the body,
so a server that never answers or sends without end cannot hang or exhaust a query; what comes back
is then decoded like any probe, so content that is not an image fails as such.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from typing import BinaryIO

from .errors import ImageError, QueryError
from .files import read_bounded

MAX_PROBE_BYTES = 50 * 1024 * 1024
URL_TIMEOUT_S = 20.0


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def fetch_url(url: str, *, max_bytes: int = MAX_PROBE_BYTES, timeout: float = URL_TIMEOUT_S) -> bytes:
    """The body of an http(s) URL, at most max_bytes, within timeout seconds in all."""
    if not is_url(url):
        raise QueryError(f"not an http(s) URL: {url}")
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"User-Agent": "simsearch", "Accept": "image/*"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise ImageError(url, f"image at URL is {int(length)} bytes, over the limit of {max_bytes}")
            return read_bounded(response, url, max_bytes, what="image", deadline=deadline)
    except urllib.error.HTTPError as exc:
        raise ImageError(url, f"cannot fetch image: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        reason = "timed out" if isinstance(exc.reason, (socket.timeout, TimeoutError)) else str(exc.reason)
        raise ImageError(url, f"cannot fetch image: {reason}") from exc
    except (TimeoutError, socket.timeout) as exc:
        raise ImageError(url, f"cannot fetch image: no answer within {timeout:g} s") from exc


def read_stdin(stream: BinaryIO, *, max_bytes: int = MAX_PROBE_BYTES) -> bytes:
    """A probe piped in (`simsearch query - < photo.jpg`)."""
    data = read_bounded(stream, "standard input", max_bytes, what="input")
    if not data:
        raise ImageError("standard input", "empty input: pipe an image in, e.g. `simsearch query - < photo.jpg`")
    return data
