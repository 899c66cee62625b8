"""``SessionPool``: ``size`` OpenEnv sessions for threads (and coroutines), in shared batches.

The pool runs an :class:`~openenv_zmq.pool.aio.AsyncSessionPool` on an event loop in a thread of
its own; every call of a session is handed to that loop, so any number of threads may hold and
step sessions at once, and the steps they make close together go out as one batch.

Handing calls over is what costs with many threads, so it is done in bulk: calling threads put
their calls in an inbox and the first one wakes the loop, which starts them all in one callback;
a step of a session already reset starts no task; each thread sleeps on a lock of its own until
its answer is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, TypeVar

from openenv_zmq.client.transport import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, AsyncTransport
from openenv_zmq.curve import CurveDir
from openenv_zmq.errors import ClosedError
from openenv_zmq.pool.aio import DEFAULT_ACQUIRE_TIMEOUT, AsyncPoolSession, AsyncSessionPool
from openenv_zmq.pool.batcher import Answer, settle
from openenv_zmq.types import StepResult

T = TypeVar("T")
Start = Callable[[Answer], None]
"""Starts a call on the pool's loop; its outcome goes to the answer it is given."""

LOOP_THREAD_NAME = "openenv-zmq-session-pool"
"""Name of the thread running a :class:`SessionPool`'s event loop."""
_LOOP_STOP_TIMEOUT_S = 5.0
_CLOSED = "the session pool is closed"


class _Waiter:
    """The :class:`Answer` a calling thread sleeps on until the loop settles it."""

    __slots__ = ("_done", "_error", "_result", "_woken")

    def __init__(self) -> None:
        self._woken = threading.Lock()
        self._woken.acquire()
        self._done = False
        self._result: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Any, /) -> None:
        self._result = result
        self._settled()

    def set_exception(self, exception: BaseException, /) -> None:
        self._error = exception
        self._settled()

    def wait(self) -> Any:
        self._woken.acquire()
        if self._error is not None:
            raise self._error
        return self._result

    def _settled(self) -> None:
        self._done = True
        self._woken.release()


class PoolSession:
    """One env of a :class:`SessionPool`, with OpenEnv's blocking client surface (``EnvClient``'s
    ``.sync()``): ``reset``, ``step`` -> ``StepResult``, ``state``, ``close``.

    Usable from any thread; calls on one session run one at a time. Each method raises what
    :class:`~openenv_zmq.pool.aio.AsyncPoolSession`'s raises.
    """

    def __init__(self, pool: SessionPool, session: AsyncPoolSession) -> None:
        self._pool = pool
        self._session = session
        self._busy = threading.Lock()

    @property
    def env_id(self) -> int:
        """The id of the env instance this session holds (its slot in the pool's group)."""
        return self._session.env_id

    def reset(self, **kwargs: Any) -> StepResult[Any]:
        """As :meth:`AsyncPoolSession.reset`, blocking."""
        with self._busy:
            return self._pool._call(self._session.reset(**kwargs))

    def step(self, action: Any, timeout_s: float | None = None) -> StepResult[Any]:
        """As :meth:`AsyncPoolSession.step`, blocking."""
        with self._busy:
            observation = self._pool._start(partial(self._session._post_step, action, timeout_s))
        return StepResult.of(observation)

    def state(self) -> Any:
        """As :meth:`AsyncPoolSession.state`, blocking."""
        with self._busy:
            return self._pool._call(self._session.state())

    def close(self) -> None:
        """Give the env back to the pool (the next holder gets a fresh episode); closing twice,
        or after the pool closed, does nothing."""
        # the pool may have closed first, and every env with it
        with self._busy, contextlib.suppress(ClosedError):
            self._pool._call(self._session.close())

    def __enter__(self) -> PoolSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Lease:
    """What :meth:`SessionPool.session` returns: a session for a ``with`` block (blocking) or an
    ``async with`` block (awaiting, from any event loop)."""

    def __init__(self, pool: SessionPool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._held: PoolSession | AsyncPoolSession | None = None

    def __enter__(self) -> PoolSession:
        session = self._pool.acquire(self._timeout)
        self._held = session
        return session

    def __exit__(self, *exc: object) -> None:
        if isinstance(self._held, PoolSession):
            self._held.close()

    async def __aenter__(self) -> AsyncPoolSession:
        session = await self._pool._async().acquire(self._timeout)
        self._held = session
        return session

    async def __aexit__(self, *exc: object) -> None:
        if isinstance(self._held, AsyncPoolSession):
            await self._held.close()


class SessionPool:
    """``size`` sessions of ``env`` on the broker at ``address``, for threads to share.

    ``SessionPool(address, env="coding", size=128)`` connects and makes the envs (raising what
    ``BatchClient`` and ``make`` raise); ``with pool.session() as env:`` holds one until the
    block ends, from any thread, and ``async with pool.session() as env:`` does the same for a
    coroutine in any event loop (its session's methods are awaited). A session asked for while
    all ``size`` are held waits until one is closed, for ``acquire_timeout`` seconds at most
    (``None``: no limit), then raises :class:`~openenv_zmq.errors.NoFreeSession`. The other
    arguments are :class:`~openenv_zmq.pool.aio.AsyncSessionPool`'s. ``close()`` (or the end
    of ``with SessionPool(...)``) closes the envs, the client and the loop thread.
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
        self.env = env
        self.size = size
        self.acquire_timeout = acquire_timeout
        self._closed = False
        # Guards the inbox; held for no system call, as every thread takes it for every call.
        self._handing = threading.Lock()
        self._inbox: list[tuple[Start, _Waiter]] = []
        self._waking = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=LOOP_THREAD_NAME, daemon=True
        )
        self._thread.start()

        async def open_pool() -> AsyncSessionPool:
            # Made on the loop thread: the client's transport belongs to the loop it runs on.
            pool = AsyncSessionPool(
                address,
                env=env,
                size=size,
                env_kwargs=env_kwargs,
                acquire_timeout=acquire_timeout,
                timeout=timeout,
                connect_timeout=connect_timeout,
                transport=transport,
                curve_dir=curve_dir,
            )
            return await pool.open()

        try:
            self._pool = self._call(open_pool())
        except BaseException:
            self._closed = True
            self._stop_loop()
            raise

    @property
    def in_use(self) -> int:
        """Sessions held now."""
        return self._pool.in_use

    def acquire(self, timeout: float | None = None) -> PoolSession:
        """A session of its own for the calling thread, until its ``close()``; see
        :meth:`AsyncSessionPool.acquire` (``NoFreeSession`` when none came free in time)."""
        return PoolSession(self, self._call(self._pool.acquire(timeout)))

    def session(self, timeout: float | None = None) -> _Lease:
        """``with pool.session() as env:`` (or ``async with``): :meth:`acquire`, and
        ``env.close()`` when the block ends."""
        return _Lease(self, timeout)

    def close(self) -> None:
        """Close the envs, the client and the loop thread: sessions waiting, and calls queued or
        in flight, raise :class:`ClosedError`, as do later calls. Closing twice does nothing."""
        with self._handing:
            if self._closed:
                return
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._pool.close(), self._loop).result()
        finally:
            self._stop_loop()

    def __enter__(self) -> SessionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _async(self) -> AsyncSessionPool:
        if self._closed:
            raise ClosedError(_CLOSED)
        return self._pool

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        try:
            result: T = self._start(lambda answer: settle(answer, asyncio.ensure_future(coroutine)))
        finally:
            coroutine.close()  # a coroutine never started (the pool closed) is not awaited
        return result

    def _start(self, start: Start) -> Any:
        # Every call is bounded by the client's request timeout or the pool's acquire timeout.
        waiter = _Waiter()
        with self._handing:
            if self._closed:
                raise ClosedError(_CLOSED)
            self._inbox.append((start, waiter))
            wake, self._waking = not self._waking, True
        if wake:
            # A pool closing meanwhile drains the inbox itself before its loop stops.
            with contextlib.suppress(RuntimeError):  # the loop is closed: it was drained
                self._loop.call_soon_threadsafe(self._drain)
        return waiter.wait()

    def _drain(self) -> None:
        with self._handing:
            started, self._inbox = self._inbox, []
            self._waking = False
        for start, waiter in started:
            try:
                start(waiter)
            except Exception as exc:  # raised before the call began (a pool not open)
                waiter.set_exception(exc)

    def _stop_loop(self) -> None:
        loop = self._loop

        async def cancel_the_rest() -> None:
            self._drain()  # calls handed over before the close: they fail as the pool is closed
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(cancel_the_rest(), loop)
        self._thread.join(_LOOP_STOP_TIMEOUT_S)
        if not self._thread.is_alive():
            loop.close()
