"""uvicorn's HTTP/1.1 protocol with a deadline for a request's headers.

uvicorn times out a connection only between requests (``timeout_keep_alive``), and stops that
timer at a request's first byte: a client that sends part of a request line and headers, or one
byte now and then, holds its connection and file descriptor for as long as it likes. Here such
a connection is closed once its headers are ``header_timeout_s`` late. The timer runs while h11
waits for a request's line and headers: from the moment the connection opens or, on a keep-alive
connection, from the first bytes received after the previous request (until those arrive,
uvicorn's keep-alive timer runs). It stops when the headers are complete: a request's body and
a WebSocket session after its upgrade are never timed here.

The protocol is h11's, whether or not httptools is installed: h11 is the parser uvicorn always
brings, the one the gateway is tested with; the gateway's hot path is WebSocket frames, which
no HTTP parser sees once a session is upgraded.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_HEADER_TIMEOUT_S = 10.0
"""Seconds a request's line and headers may take to arrive. Apache's mod_reqtimeout as
distributions ship it allows 10 (``header=10-20``), HAProxy's anti-DoS example 5; OpenEnv's
clients send their headers in one write, so only a stalled or hostile client comes near it."""


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's ``H11Protocol``, closing a connection whose request headers are late.

    Subclass it with another ``header_timeout_s``, or use :func:`header_timeout_protocol`.
    """

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    _header_timer: asyncio.TimerHandle | None = None

    # Narrowed to a Transport as H11Protocol narrows it, which mypy flags in uvicorn too.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._time_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._time_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _time_headers(self) -> None:
        # h11 leaves IDLE at a complete request line and headers and returns to it only when
        # the next request may begin, so IDLE is exactly "waiting for headers". An upgraded
        # connection never returns to IDLE: its cycle is not restarted.
        if self.conn.their_state is not h11.IDLE:
            self._stop_header_timer()
        elif self._header_timer is None:
            # Started once per request, not per byte: a client trickling bytes gains nothing.
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def header_timeout_protocol(timeout_s: float) -> type[HeaderTimeoutH11Protocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)`` for headers due within
    ``timeout_s`` seconds. Raises ``ValueError`` unless ``timeout_s`` is positive."""
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")

    class Protocol(HeaderTimeoutH11Protocol):
        header_timeout_s = timeout_s

    return Protocol
