"""The HTTP server's connections, under uvicorn: the part of slow-client defence an ASGI app cannot see.

uvicorn counts every open connection against its concurrency limit and gives a connection that never
finishes its request headers all the time in the world (its keep-alive timeout runs only after a
response). 130 such connections made every request answer 503 for as long as they stayed open. Here a
connection must finish its request headers within `header_timeout` seconds of opening (or of its last
response) or it is closed, and until it has, it does not count against the limit. Bodies are bounded
in size and time by simsearch.guard.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0
CONCURRENCY = 128  # requests in progress at once; the rest are answered 503 at once
KEEP_ALIVE_S = 5.0


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request's headers."""

    header_timeout = HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.connections.discard(self)  # counted once it has sent a whole request's headers
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_overdue)

    def _headers_overdue(self) -> None:
        self._header_timer = None
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()  # no request under way and none arriving in time

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete and self._header_timer is not None:
            self._header_timer.cancel()  # a request's headers are in: the app's own limits apply from here
            self._header_timer = None
            if not self.transport.is_closing():
                self.connections.add(self)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection gets the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)


def with_header_timeout(seconds: float) -> type[HeaderTimeoutProtocol]:
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": seconds})


def server_options(*, header_timeout: float = HEADER_TIMEOUT_S) -> dict[str, Any]:
    """How `simsearch serve` runs the app under uvicorn (uvicorn.run's keywords): bounded requests in
    progress, idle keep-alives closed, and connections that never finish their headers closed too."""
    return {"http": with_header_timeout(header_timeout), "limit_concurrency": CONCURRENCY,
            "timeout_keep_alive": int(KEEP_ALIVE_S), "log_level": "warning"}


def server_config(app: Any, host: str, port: int, *, header_timeout: float = HEADER_TIMEOUT_S) -> uvicorn.Config:
    """The same as a uvicorn.Config, for a server run in a thread (tests, embedding)."""
    return uvicorn.Config(app, host=host, port=port, **server_options(header_timeout=header_timeout))
