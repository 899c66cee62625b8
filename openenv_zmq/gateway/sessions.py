"""The gateway's OpenEnv sessions: each owns one slot (env id) of a :class:`SlotPool`.

A session is held by a ``/ws`` connection, or opened over ``POST /mcp`` and named by its id
(:class:`SessionRegistry`). The pool batches the steps of all sessions together.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from openenv_zmq.pool.slots import SlotPool


def capacity_message(pool: SlotPool) -> str:
    """What a session refused for want of a free slot is told (OpenEnv's words)."""
    return f"Server at capacity ({pool.max_sessions} sessions)"


@dataclass(eq=False)
class Session:
    """One slot held under an id, as OpenEnv's sessions are."""

    id: str
    slot: int
    last_active: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held for each call on the slot: a session's calls never share a batch."""
    attached: bool = False
    """A ``/ws`` connection serves the session; it is then never idle."""
    closing: bool = False
    """Closed as soon as its connection detaches (a connection's own session, or one closed over
    ``POST /mcp`` while a connection served it)."""
    closed: bool = False


class SessionUnavailable(Exception):
    """A session named by its id cannot be used; the message is OpenEnv's for the case."""


class SessionRegistry:
    """The sessions of one :class:`SlotPool`, by id.

    A ``/ws`` connection either opens its own (``open(attached=True)``) or attaches to one that
    ``openenv/session/create`` opened, and detaches when it ends. Calls on a session's slot, from
    its connection or from ``POST /mcp`` requests naming it, go through :meth:`use`, one at a time.

    A session with no connection lives until ``openenv/session/close``, or until it has been idle
    for ``idle_timeout_s`` (:meth:`reap`; ``None``: no limit). Each holds a slot of the pool, so
    there are never more than its ``max_sessions``, and a full pool refuses new ones.
    """

    def __init__(
        self,
        pool: SlotPool,
        idle_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.idle_timeout_s = idle_timeout_s
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def open(self, attached: bool = False) -> Session | None:
        """A new session on a free slot (``None`` when none is free). ``attached``: the calling
        connection's own, closed when it detaches."""
        slot = self.pool.acquire()
        if slot is None:
            return None
        session = Session(str(uuid.uuid4()), slot, self._clock(), attached=attached)
        session.closing = attached
        self._sessions[session.id] = session
        return session

    def get(self, session_id: Any) -> Session | None:
        """The open session with this id; ids are strings, anything else names none."""
        return self._sessions.get(session_id) if isinstance(session_id, str) else None

    def attach(self, session_id: str) -> Session:
        """Serve the session on the calling connection; raises :class:`SessionUnavailable` for
        an unknown id or a session another connection serves."""
        session = self.get(session_id)
        if session is None:
            raise SessionUnavailable(f"Unknown session_id: {session_id}")
        if session.attached:
            raise SessionUnavailable(f"Session {session_id} already has an attached WebSocket")
        session.attached = True
        return session

    async def detach(self, session: Session) -> None:
        """The connection serving ``session`` ended: it is closed if it was closing, else idle
        from now."""
        async with session.lock:
            session.attached = False
            session.last_active = self._clock()
            if session.closing:
                self._release(session)

    async def close(self, session: Session) -> bool:
        """Close ``session`` once no call is running on it: ``True`` when it is closed now,
        ``False`` when a connection serves it (then it closes when that detaches)."""
        async with session.lock:
            if session.attached:
                session.closing = True
                return False
            self._release(session)
            return True

    @asynccontextmanager
    async def use(self, session: Session) -> AsyncIterator[int]:
        """The session's slot, for one call at a time; raises :class:`SessionUnavailable` when
        the session was closed meanwhile."""
        async with session.lock:
            if session.closed:
                raise SessionUnavailable(f"Unknown session_id: {session.id}")
            try:
                yield session.slot
            finally:
                session.last_active = self._clock()

    def expire(self) -> list[str]:
        """Close the sessions no connection serves that have been idle for ``idle_timeout_s``
        (a call running on one is not idle); returns their ids."""
        if self.idle_timeout_s is None:
            return []
        deadline = self._clock() - self.idle_timeout_s
        expired = [
            s
            for s in self._sessions.values()
            if not s.attached and not s.lock.locked() and s.last_active < deadline
        ]
        for session in expired:
            self._release(session)
        return [s.id for s in expired]

    async def reap(self) -> None:
        """Run :meth:`expire` four times per ``idle_timeout_s``, until cancelled."""
        if self.idle_timeout_s is None:
            return
        while True:
            await asyncio.sleep(self.idle_timeout_s / 4)
            self.expire()

    def _release(self, session: Session) -> None:
        if not session.closed:
            session.closed = True
            del self._sessions[session.id]
            self.pool.release(session.slot)
