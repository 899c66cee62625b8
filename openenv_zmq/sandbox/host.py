"""What an env that runs untrusted code sees: a host that opens sessions, and the sessions.

A session is one env instance's interpreter state (the coding env's variables, imports and
``def``\\ s). It serves requests (msgpack-able dicts) with a handler built from a factory named
``"module:attr"`` (a class or function returning an object with ``handle(request) -> reply``).
``call`` / ``call_async`` raise :class:`SessionTimedOut` when the deadline passed (the session's
process was killed: open a new one) and :class:`~openenv_zmq.errors.SessionCrashed` when its
process died on its own. Both leave the session closed.

Which host a process gets is decided once, by the operator, through :func:`configure`:
contained (the default, :mod:`.contained`) or in-process (``--unsafe-in-process-code``,
:class:`InProcessHost`); no client request can choose it.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from openenv_zmq.errors import SandboxError

Request = dict[str, Any]
Reply = dict[str, Any]


class Handler(Protocol):
    """What runs inside a session: one object per session, built by its factory."""

    def handle(self, request: Request) -> Reply: ...


class SessionTimedOut(Exception):
    """The call outran its deadline and the session's process was killed."""


class Session(ABC):
    """One env instance's interpreter, alive until :meth:`close` or a timeout or crash."""

    pid: int | None = None
    """The process serving it (``None`` in-process)."""

    @abstractmethod
    def call(self, request: Request, timeout_s: float | None) -> Reply:
        """Serve ``request``; raises :class:`SessionTimedOut` or ``SessionCrashed``."""

    @abstractmethod
    async def call_async(self, request: Request, timeout_s: float | None) -> Reply:
        """:meth:`call` without blocking the event loop."""

    @abstractmethod
    def close(self) -> None:
        """End the session (kill its process); idempotent."""


class SessionHost(ABC):
    """Opens sessions; one per process, chosen by :func:`configure`."""

    @abstractmethod
    def open(self, factory: str) -> Session:
        """A fresh session whose handler ``factory`` builds."""

    @abstractmethod
    async def open_async(self, factory: str) -> Session:
        """:meth:`open` without blocking the event loop."""

    @property
    @abstractmethod
    def layers(self) -> Mapping[str, str]:
        """Each containment layer and its state (``on`` or why it is off), for status."""

    @abstractmethod
    def close(self) -> None:
        """End every session and the host's own processes."""


def load_factory(path: str) -> Callable[[], Handler]:
    """Import ``"module:attr"``; a path that does not resolve is a :class:`SandboxError`."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise SandboxError(f"session factory {path!r} is not 'module:attr'")
    try:
        factory: Callable[[], Handler] = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SandboxError(f"session factory {path!r} does not resolve: {exc}") from exc
    return factory


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


def running_host() -> SessionHost | None:
    """The host if one was started, for status and shutdown."""
    return _host


def shutdown() -> None:
    """Close the host (and its zygote); the next :func:`session_host` starts a new one."""
    global _host
    with _lock:
        host, _host = _host, None
    if host is not None:
        host.close()
