"""The interfaces between an env that runs untrusted code and the sessions that run it.

A session is one env instance's interpreter state (the coding env's variables, imports and
``def``\\ s). It serves requests (msgpack-able dicts) with a handler built from a factory named
``"module:attr"`` (a class or function returning an object with ``handle(request) -> reply``).
``call`` / ``call_async`` raise :class:`SessionTimedOut` when the deadline passed (the session's
process was killed: open a new one) and :class:`~openenv_zmq.errors.SessionCrashed` when its
process died on its own. Both leave the session closed.
"""

from __future__ import annotations

import importlib
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
