"""Many sessions over one env group: each session owns one env id (its slot).

Steps (and resets) that sessions send while the previous call is in flight go to the broker as
ONE batched call on the slots concerned, so many sessions cost few batches. A session is held by
a ``/ws`` connection, or opened over ``POST /mcp`` and named by its id (:class:`SessionRegistry`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Generic, Self, TypeVar

import numpy as np

from openenv_zmq.client.aio import AsyncBatchClient, AsyncEnvGroup
from openenv_zmq.client.results import BatchResult
from openenv_zmq.errors import ProtocolError, TransportError

P = TypeVar("P")


@dataclass
class _Pending(Generic[P]):
    slot: int
    payload: P
    answer: asyncio.Future[Any]


class _Batcher(Generic[P]):
    """Sends per-slot requests as few calls as possible, without ever holding one back.

    An idle batcher sends a request on the next turn of the event loop (with whatever else
    arrived in that turn); while a call is in flight, new requests gather and go out together
    as soon as it returns. No fixed waiting window: a lone session pays no batching delay.
    """

    def __init__(self, send: Callable[[list[int], list[P]], Awaitable[BatchResult]]) -> None:
        self._send = send
        self._queue: list[_Pending[P]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, slot: int, payload: P) -> Any:
        """The slot's observation; raises the slot's ``EnvError`` or the whole call's error."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Pending(slot, payload, answer))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return await answer

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send_batch(batch)
        finally:
            self._flusher = None

    async def _send_batch(self, batch: list[_Pending[P]]) -> None:
        try:
            result = await self._send([p.slot for p in batch], [p.payload for p in batch])
        except Exception as exc:
            if isinstance(exc, ProtocolError) and len(batch) > 1:
                # A request refused whole (too large for the broker, or a value the wire cannot
                # carry) fails its own session alone, not the sessions batched with it.
                for pending in batch:
                    await self._send_batch([pending])
                return
            for pending in batch:
                if not pending.answer.done():
                    pending.answer.set_exception(exc)
            return
        for i, pending in enumerate(batch):
            if pending.answer.done():  # the session went away while the batch was in flight
                continue
            error = result.errors.get(pending.slot)
            if error is not None:
                pending.answer.set_exception(error)
            else:
                pending.answer.set_result(result.observations[i])

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)


class SessionPool:
    """``max_sessions`` env slots of one env group, handed out to sessions one each.

    Call order: ``acquire()`` a slot (``None`` when all are taken), then any number of
    ``reset`` / ``step`` / ``state`` on it, one at a time, then ``release()``. A slot whose
    session has not reset it yet is reset (without a seed) before its first step or state, so
    no session sees another's episode.

    ``reset`` and ``step`` return the env's observation and ``state`` its state, as the decoded
    dicts when the group was made with ``as_dicts`` (as :meth:`open` makes it: the gateway
    forwards them as JSON, so no model is built). A failing env raises its ``EnvError``
    (``ActionValidationError``, with pydantic's error list, for a bad action); a failed call
    raises the client's error (``RequestTimeout``, ``RemoteError``, ...).
    """

    def __init__(self, group: AsyncEnvGroup) -> None:
        self.group = group
        self.max_sessions = len(group)
        self._free: list[int] = group.env_ids.tolist()[::-1]
        self._ready: set[int] = set()
        self._steps: _Batcher[dict[str, Any]] = _Batcher(self._send_steps)
        self._resets: _Batcher[tuple[int | None, dict[str, Any]]] = _Batcher(self._send_resets)

    @classmethod
    async def open(
        cls,
        client: AsyncBatchClient,
        env: str,
        max_sessions: int,
    ) -> Self:
        """Make ``max_sessions`` instances of ``env`` on ``client``'s broker."""
        return cls(await client.make(env, num_envs=max_sessions, as_dicts=True))

    @property
    def active_sessions(self) -> int:
        return self.max_sessions - len(self._free)

    @property
    def capacity_message(self) -> str:
        """What a session refused for want of a free slot is told."""
        return f"Server at capacity ({self.max_sessions} sessions)"

    def acquire(self) -> int | None:
        """A free slot (env id) for a new session, or ``None`` when every slot is taken."""
        return self._free.pop() if self._free else None

    def release(self, slot: int) -> None:
        """Give the slot back; its episode is not continued by the next session."""
        self._ready.discard(slot)
        self._free.append(slot)

    async def reset(
        self, slot: int, seed: int | None = None, kwargs: dict[str, Any] | None = None
    ) -> Any:
        observation = await self._resets.submit(slot, (seed, kwargs or {}))
        self._ready.add(slot)
        return observation

    async def step(self, slot: int, action: dict[str, Any], timeout_s: float | None = None) -> Any:
        """``timeout_s`` (OpenEnv's, from ``POST /step``) is the step's deadline: such a step
        goes out on its own, as a batch shares one deadline."""
        await self._ensure_reset(slot)
        if timeout_s is None:
            return await self._steps.submit(slot, action)
        result = await self.group.step([action], env_ids=[slot], timeout_s=timeout_s)
        result.raise_for_errors()
        return result.observations[0]

    async def state(self, slot: int) -> Any:
        await self._ensure_reset(slot)
        [state] = await self.group.state(env_ids=[slot])
        return state

    async def close(self) -> None:
        """Stop pending batches and close the env group, unless the broker is gone (a gateway
        stopped with its broker, by one Ctrl-C or two): its slots went with it."""
        await self._steps.close()
        await self._resets.close()
        with suppress(TransportError):
            await self.group.close()

    async def _ensure_reset(self, slot: int) -> None:
        if slot not in self._ready:
            await self.reset(slot)

    async def _send_steps(self, slots: list[int], actions: list[dict[str, Any]]) -> BatchResult:
        return await self.group.step(actions, env_ids=np.asarray(slots, np.int64))

    async def _send_resets(
        self, slots: list[int], calls: Sequence[tuple[int | None, dict[str, Any]]]
    ) -> BatchResult:
        return await self.group.reset(
            seed=[seed for seed, _ in calls],
            env_ids=np.asarray(slots, np.int64),
            kwargs=[kwargs for _, kwargs in calls],
        )


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
    """The sessions of one :class:`SessionPool`, by id.

    A ``/ws`` connection either opens its own (``open(attached=True)``) or attaches to one that
    ``openenv/session/create`` opened, and detaches when it ends. Calls on a session's slot, from
    its connection or from ``POST /mcp`` requests naming it, go through :meth:`use`, one at a time.

    A session with no connection lives until ``openenv/session/close``, or until it has been idle
    for ``idle_timeout_s`` (:meth:`reap`; ``None``: no limit). Each holds a slot of the pool, so
    there are never more than its ``max_sessions``, and a full pool refuses new ones.
    """

    def __init__(
        self,
        pool: SessionPool,
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
