"""What the HTTP server lets in, checked before any endpoint runs (an ASGI middleware).

- Host: only the names the server is meant to be reached by (localhost names, the address it binds,
  and names given with --allowed-host). A web page on another site that re-points its own DNS name at
  127.0.0.1 (DNS rebinding) sends its own name as Host and is refused, so it cannot read photos.
- Bodies: read whole before the endpoint sees them, within a size bound and a time limit, so a slow
  client (a byte every second) is cut off rather than holding a worker forever.
- Every response says how a browser may use it: never inside a frame of another page (clickjacking: a
  page elsewhere framing the duplicates view and luring two clicks), never sniffed as another type, and
  no Referer sent on. The page itself loads nothing from elsewhere (its Content-Security-Policy).
Origin checks for state-changing requests and the bearer token live with the endpoints (simsearch.server).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
SECURITY_HEADERS = [
    (b"content-security-policy", b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
PAGE_POLICY = (b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
               b"script-src 'self' 'unsafe-inline'; connect-src 'self'; object-src 'none'; "
               b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def hostname(host_header: str) -> str:
    """`name[:port]` or `[v6]:port` -> the name, lower-cased."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def allowed_hosts(bind: str | None, extra: Iterable[str] = ()) -> frozenset[str]:
    names = set(LOCAL_HOSTS) | {hostname(h) for h in extra}
    if bind and bind not in ("0.0.0.0", "::"):
        names.add(hostname(bind))
    return frozenset(names)


async def _reply(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message, "kind": "HTTPError"}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], *, hosts: frozenset[str],
                 max_body: int, body_timeout: float) -> None:
        self.app, self.hosts, self.max_body, self.body_timeout = app, hosts, max_body, body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self._checked(scope, receive, _with_security_headers(send, page=scope.get("path") == "/"))

    async def _checked(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = hostname(headers.get("host", ""))
        if host not in self.hosts:
            await _reply(send, 400, f"Host {host or '(none)'!r} is not served here: reach this server by one of "
                                    f"{', '.join(sorted(self.hosts))} (or start it with --allowed-host)")
            return
        if scope.get("method") not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            await _reply(send, 413, f"upload larger than {self.max_body} bytes")
            return
        try:
            body = await asyncio.wait_for(self._read_body(receive), self.body_timeout)
        except asyncio.TimeoutError:
            await _reply(send, 408, f"the request body did not arrive within {self.body_timeout:g} s")
            return
        except _TooLarge:
            await _reply(send, 413, f"upload larger than {self.max_body} bytes")
            return
        if body is None:  # the client went away
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _TooLarge
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


def _with_security_headers(send: Send, *, page: bool) -> Send:
    """send, with SECURITY_HEADERS added to the response's start (the page's own policy on the page)."""
    extra = [(k, PAGE_POLICY if page and k == b"content-security-policy" else v) for k, v in SECURITY_HEADERS]

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            names = {k.lower() for k, _ in message.get("headers", [])}
            message = message | {"headers": [*message.get("headers", []), *((k, v) for k, v in extra if k not in names)]}
        await send(message)

    return sending


class _TooLarge(Exception):
    pass


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the client's disconnect, as the server would

    return replay
