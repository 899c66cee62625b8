"""Running the calls of pending requests: an event loop on its own thread, and a thread pool.

The worker's own thread never waits here: it hands a :class:`~openenv_zmq.worker.core.Pending`
request to :meth:`CallRunner.submit` and goes on serving other requests; when every call of the
request has ended (returned, raised, or outrun its deadline) the runner calls back, and the
worker's thread settles and sends the reply.

Async envs are awaited together on the loop; sync ones run on daemon threads, at most
``concurrency`` at once per ``make`` (its :class:`~openenv_zmq.worker.slots.Runtime`) and
``max_threads`` in all. A call that outruns its deadline is abandoned: a coroutine is cancelled,
but a thread cannot be stopped, so it runs on until the env returns (its result is dropped) and
holds one of the ``max_threads`` until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from openenv_zmq.worker.calls import Call, Mode

if TYPE_CHECKING:
    from openenv_zmq.worker.core import Pending
    from openenv_zmq.worker.kinds import Runtime

log = logging.getLogger(__name__)

MAX_THREADS = 256
"""Default bound on the threads one worker runs blocking env calls on."""

_CLOSE_SECONDS = 1.0
"""How long closing waits for the loop's tasks to be cancelled."""

Done = Callable[["Pending"], None]


class CallRunner:
    """Runs the calls of :class:`Pending` requests concurrently; started on first use."""

    def __init__(self, max_threads: int = MAX_THREADS) -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be at least 1, got {max_threads}")
        self._threads = _DaemonThreads(max_threads)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._limits: weakref.WeakKeyDictionary[Runtime, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def submit(self, pending: Pending, done: Done) -> None:
        """Run ``pending``'s calls; ``done(pending)`` is called (on the runner's thread) when
        they have all ended."""
        asyncio.run_coroutine_threadsafe(self._run(pending, done), self._started())

    def run(self, pending: Pending) -> None:
        """Run ``pending``'s calls and wait for them (the in-process transport's way)."""
        future = asyncio.run_coroutine_threadsafe(self._run(pending, None), self._started())
        future.result()

    def close(self) -> None:
        """Cancel what is awaited and stop the loop; threads stuck in an env are left to the
        process's exit (they are daemons)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        cancelled = asyncio.run_coroutine_threadsafe(_cancel_tasks(), loop)
        with contextlib.suppress(Exception):
            cancelled.result(_CLOSE_SECONDS)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_CLOSE_SECONDS)
        if not thread.is_alive():
            loop.close()
        self._threads.close()
        self._loop = self._thread = None

    def _started(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=loop.run_forever, name="worker-calls", daemon=True
            )
            self._thread.start()
            self._loop = loop
        return self._loop

    async def _run(self, pending: Pending, done: Done | None) -> None:
        await asyncio.gather(*(self._call(call) for call in pending.calls))
        if done is not None:
            done(pending)

    async def _call(self, call: Call) -> None:
        limit = self._limit(call)
        async with limit or contextlib.nullcontext():
            if call.mode is Mode.ASYNC:
                job: Any = call.run_async()
            else:
                job = self._threads.run(call.run, asyncio.get_running_loop())
            try:
                await asyncio.wait_for(job, call.wait_s)
            except TimeoutError:
                call.timed_out = True

    def _limit(self, call: Call) -> asyncio.Semaphore | None:
        """The semaphore bounding the calls of ``call``'s ``make``: its ``concurrency``; one at
        a time for a sync env that is off the worker's thread only for a deadline; none for an
        async env that sets no bound."""
        runtime = call.slot.runtime
        bound = runtime.concurrency or (None if call.mode is Mode.ASYNC else 1)
        if bound is None:
            return None
        limit = self._limits.get(runtime)
        if limit is None:
            limit = self._limits[runtime] = asyncio.Semaphore(bound)
        return limit


async def _cancel_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _DaemonThreads:
    """At most ``limit`` daemon threads, started as work arrives and then kept.

    Not a ``ThreadPoolExecutor``: its threads are joined when the interpreter exits, so one env
    stuck in an abandoned step would keep the worker process from ever exiting.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[], None], asyncio.AbstractEventLoop, asyncio.Future[None]] | None
        ] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        self._waiting = 0
        """Jobs queued that no thread has taken yet, less the threads idle to take them."""

    def run(self, fn: Callable[[], None], loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """Run ``fn`` (which must not raise) on a thread; the future resolves on ``loop``."""
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._waiting += 1
            if self._waiting > 0 and self._started < self._limit:
                self._started += 1
                self._waiting -= 1  # the new thread takes it, or another job as soon
                threading.Thread(target=self._serve, name="worker-env", daemon=True).start()
        self._jobs.put((fn, loop, future))
        return future

    def close(self) -> None:
        """Let idle threads end; busy ones end after their job."""
        for _ in range(self._started):
            self._jobs.put(None)

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, loop, future = job
            try:
                fn()
            except BaseException:  # Call.run catches what the env raises; this is a bug
                log.exception("a call on a worker thread raised")
            with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
                loop.call_soon_threadsafe(_resolve, future)
            with self._lock:
                self._waiting -= 1  # idle again: one more queued job needs no new thread


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # cancelled when the call outran its deadline
        future.set_result(None)
