"""``AsyncSessionPool``: ``size`` OpenEnv sessions for asyncio code, stepped in shared batches.

Each session is one env instance of one group, with OpenEnv's client surface (``reset``,
``step`` -> ``StepResult``, ``state``, ``close``). Calls that sessions make close together go to
the broker as one batch (:class:`~openenv_zmq.pool.slots.SlotPool`), so 128 coroutines stepping
one session each cost a few batched calls, not 128 round trips.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from openenv_zmq.client.aio import AsyncBatchClient
from openenv_zmq.client.transport import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, AsyncTransport
from openenv_zmq.curve import CurveDir
from openenv_zmq.errors import ClientError, ClosedError, NoFreeSession
from openenv_zmq.pool.batcher import Answer
from openenv_zmq.pool.slots import SlotPool
from openenv_zmq.types import StepResult

T = TypeVar("T")

DEFAULT_ACQUIRE_TIMEOUT = 60.0
"""Seconds a new session waits for a free one before :class:`NoFreeSession`."""
NOT_OPEN = "the session pool is not open: use 'async with' or open()"
SESSION_CLOSED = "this session is closed: its env went back to the pool"


class AsyncPoolSession:
    """One env of an :class:`AsyncSessionPool`, with OpenEnv's ``EnvClient`` surface.

    A new session's env starts a fresh episode: its first call is ``reset()``, or a ``step()``
    or ``state()`` that resets it first (without a seed). Calls on one session run one at a
    time; calls on different sessions share batches. A failing env raises its ``EnvError`` in
    this session only (``ActionValidationError`` for a bad action, ``WorkerLost``...); a failed
    call raises the client's error (``RequestTimeout``...). :meth:`close` gives the env back to
    the pool; a call after it raises :class:`ClosedError`.
    """

    def __init__(self, pool: AsyncSessionPool, slot: int) -> None:
        self._pool = pool
        self._slot = slot
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def env_id(self) -> int:
        """The id of the env instance this session holds (its slot in the pool's group)."""
        return self._slot

    async def reset(self, **kwargs: Any) -> StepResult[Any]:
        """Start a new episode; ``kwargs`` (``seed``, ``episode_id``, ...) go to the env's
        ``reset``, which drops those its signature does not take."""
        seed = kwargs.pop("seed", None)
        observation = await self._locked(self._pool._slot_pool().reset, seed, kwargs)
        return StepResult.of(observation)

    async def step(self, action: Any, timeout_s: float | None = None) -> StepResult[Any]:
        """Apply ``action`` (the env's Action model, or its fields as a dict). ``timeout_s`` is
        this step's deadline (``StepTimeout`` past it); such a step is sent on its own."""
        observation = await self._locked(self._pool._slot_pool().step, action, timeout_s)
        return StepResult.of(observation)

    async def state(self) -> Any:
        """The env's State model (a dict when this process cannot import the env's types)."""
        return await self._locked(self._pool._slot_pool().state)

    async def close(self) -> None:
        """Give the env back to the pool, once a call running on it is done; the next holder
        gets a fresh episode. Closing twice does nothing."""
        await self._pool._run(self._close())

    async def __aenter__(self) -> AsyncPoolSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _locked(self, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        if not self._pool._on_loop():
            return await self._pool._run(self._locked(call, *args))
        async with self._lock:
            if self._closed:
                raise ClosedError(SESSION_CLOSED)
            return await call(self._slot, *args)

    def _post_step(self, action: Any, timeout_s: float | None, answer: Answer) -> None:
        # step() for a caller that serializes its own calls (the sync session), from the
        # pool's loop: no task, no lock.
        if self._closed:
            answer.set_exception(ClosedError(SESSION_CLOSED))
        else:
            self._pool._slot_pool().post_step(self._slot, action, timeout_s, answer)

    async def _close(self) -> None:
        async with self._lock:
            if not self._closed:
                self._closed = True
                await self._pool._release(self._slot)


class AsyncSessionPool:
    """``size`` sessions of ``env`` on the broker at ``address``, for coroutines to share.

    ``async with AsyncSessionPool(address, env="echo", size=128) as pool:`` makes the envs (or
    ``await pool.open()``, then ``await pool.close()``); then ``async with pool.session() as
    env:`` holds one until the block ends. A session asked for while all ``size`` are held waits
    until one is closed, for ``acquire_timeout`` seconds at most (``None``: no limit), then
    raises :class:`NoFreeSession`. ``env_kwargs`` go to the envs' constructor; ``timeout``,
    ``connect_timeout``, ``transport`` and ``curve_dir`` are the client's (see
    ``AsyncBatchClient``). Use the pool from the event loop it was opened in; for threads, or
    several loops, use :class:`~openenv_zmq.pool.sync.SessionPool`.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        env: str,
        size: int,
        env_kwargs: dict[str, Any] | None = None,
        acquire_timeout: float | None = DEFAULT_ACQUIRE_TIMEOUT,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        transport: AsyncTransport | None = None,
        curve_dir: CurveDir | None = None,
    ) -> None:
        if size < 1:
            raise ClientError(f"a session pool needs at least one session, got size={size}")
        self.env = env
        self.size = size
        self.acquire_timeout = acquire_timeout
        self._env_kwargs = env_kwargs
        self._client = AsyncBatchClient(
            address,
            timeout=timeout,
            connect_timeout=connect_timeout,
            transport=transport,
            curve_dir=curve_dir,
        )
        self._slots: SlotPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._freed: asyncio.Condition | None = None
        self._closed = False

    @property
    def in_use(self) -> int:
        """Sessions held now."""
        return 0 if self._slots is None else self._slots.active_sessions

    async def open(self) -> AsyncSessionPool:
        """Connect and make the ``size`` envs; returns the pool. Raises what
        ``AsyncBatchClient.connect`` and ``make`` raise (``BrokerUnreachable``,
        ``NoWorkerAvailable``...), and ``ClientError`` for an array env (``cartpole``), the
        client closed again."""
        if self._closed:
            raise ClosedError("the session pool is closed")
        if self._slots is not None:
            return self
        try:
            await self._client.connect()
            slots = await SlotPool.open(
                self._client, self.env, self.size, env_kwargs=self._env_kwargs
            )
            if slots.group.observation_space is not None:
                # A session's StepResult takes reward and done from an Observation model.
                raise ClientError(
                    f"{self.env!r} is an array env: session pools serve envs with Observation "
                    "models; step it in batches (BatchClient, openenv_zmq.gym.make_vec)"
                )
        except BaseException:
            await self._client.close()
            raise
        self._slots = slots
        self._loop = asyncio.get_running_loop()
        self._freed = asyncio.Condition()
        return self

    async def acquire(self, timeout: float | None = None) -> AsyncPoolSession:
        """A session of its own for the caller, until its ``close()``: one is free now, or the
        first to be closed within ``timeout`` seconds (``None``: the pool's
        ``acquire_timeout``). Raises :class:`NoFreeSession` when none came free in time."""
        wait = self.acquire_timeout if timeout is None else timeout
        return await self._run(self._acquire(wait))

    @asynccontextmanager
    async def session(self, timeout: float | None = None) -> AsyncIterator[AsyncPoolSession]:
        """``async with pool.session() as env:``: :meth:`acquire`, and ``env.close()`` when the
        block ends."""
        session = await self.acquire(timeout)
        try:
            yield session
        finally:
            await session.close()

    async def close(self) -> None:
        """Close the envs and the client: sessions waiting, and calls queued or in flight,
        raise :class:`ClosedError`. Closing twice does nothing."""
        if self._closed:
            return
        self._closed = True
        await self._run(self._close())

    async def __aenter__(self) -> AsyncSessionPool:
        try:
            return await self.open()
        except BaseException:
            self._closed = True
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _on_loop(self) -> bool:
        # Sessions of the sync pool used with ``async with`` call from another loop's thread.
        return self._loop is None or asyncio.get_running_loop() is self._loop

    async def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._on_loop():
            return await coroutine
        assert self._loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self._loop))

    def _slot_pool(self) -> SlotPool:
        if self._slots is None:
            raise ClientError(NOT_OPEN)
        return self._slots

    def _condition(self) -> asyncio.Condition:
        if self._freed is None:
            raise ClientError(NOT_OPEN)
        return self._freed

    async def _acquire(self, timeout: float | None) -> AsyncPoolSession:
        slots, freed = self._slot_pool(), self._condition()
        async with freed:
            try:
                async with asyncio.timeout(timeout):
                    await freed.wait_for(lambda: self._closed or slots.active_sessions < self.size)
            except TimeoutError:
                raise NoFreeSession(
                    f"all {self.size} sessions of the {self.env!r} pool stayed in use for"
                    f" {timeout:g} s: close sessions sooner, or make the pool larger"
                ) from None
            if self._closed:
                raise ClosedError("the session pool is closed")
            slot = slots.acquire()
            assert slot is not None, "a free slot was counted"
            return AsyncPoolSession(self, slot)

    async def _release(self, slot: int) -> None:
        freed = self._condition()
        async with freed:
            self._slot_pool().release(slot)
            freed.notify()

    async def _close(self) -> None:
        try:
            if self._slots is not None:
                freed = self._condition()
                async with freed:
                    freed.notify_all()  # the sessions waiting raise ClosedError
                await self._slots.close()
        finally:
            await self._client.close()
