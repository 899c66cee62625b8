"""Which session host this process has: contained (the default, :mod:`.contained`) or
in-process (``--unsafe-in-process-code``, :class:`InProcessHost`), decided once by the operator
through :func:`configure`; no client request can choose it. The interfaces are in
:mod:`.sessions`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping

from openenv_zmq.errors import SandboxError
from openenv_zmq.sandbox.sessions import Handler, Reply, Request, Session, SessionHost, load_factory


class InProcessSession(Session):
    """A handler called in this very process: no containment and no deadline (code that never
    returns holds its thread for good), as OpenEnv runs it."""

    def __init__(self, handler: Handler) -> None:
        self._handler: Handler | None = handler

    def call(self, request: Request, timeout_s: float | None) -> Reply:
        if self._handler is None:
            raise SandboxError("the session is closed")
        return self._handler.handle(request)

    async def call_async(self, request: Request, timeout_s: float | None) -> Reply:
        # A thread keeps the event loop answering other sessions while this one computes.
        return await asyncio.to_thread(self.call, request, timeout_s)

    def close(self) -> None:
        self._handler = None


class InProcessHost(SessionHost):
    """``--unsafe-in-process-code``: for trusted code only."""

    def open(self, factory: str) -> Session:
        return InProcessSession(load_factory(factory)())

    async def open_async(self, factory: str) -> Session:
        return self.open(factory)

    @property
    def layers(self) -> Mapping[str, str]:
        return {"in-process": "on: code runs inside the worker, uncontained"}

    def close(self) -> None:
        """Nothing to end: the sessions are objects of this process."""


_lock = threading.Lock()
_host: SessionHost | None = None
_make_host: Callable[[], SessionHost] | None = None


def configure(make_host: Callable[[], SessionHost]) -> None:
    """Set how this process's host is built (the worker does it from its flags, first thing)."""
    global _make_host
    with _lock:
        if _host is not None:
            raise SandboxError("the session host is already running; configure it first")
        _make_host = make_host


def reset_configuration() -> None:
    """Undo :func:`configure`: the next host is the default (contained) one again. Like
    :func:`configure` it must come before the host starts (or after :func:`shutdown`)."""
    global _make_host
    with _lock:
        if _host is not None:
            raise SandboxError("the session host is still running; shut it down first")
        _make_host = None


def session_host() -> SessionHost:
    """This process's host, started on first use (contained unless configured otherwise)."""
    global _host
    with _lock:
        if _host is None:
            if _make_host is None:
                from openenv_zmq.sandbox.contained import ContainedHost

                _host = ContainedHost()
            else:
                _host = _make_host()
        return _host


def shutdown() -> None:
    """Close the host (and its zygote); the next :func:`session_host` starts a new one."""
    global _host
    with _lock:
        host, _host = _host, None
    if host is not None:
        host.close()
