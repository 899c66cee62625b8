"""Running the calls of pending requests: an event loop on its own thread, and a thread pool.

The worker's own thread never waits here: it hands a :class:`~openenv_zmq.worker.core.Pending`
request to :meth:`CallRunner.submit` and goes on serving other requests; when every call of the
request has ended (returned, raised, or outrun its deadline) the runner calls back, and the
worker's thread settles and sends the reply.

Async envs are awaited together on the loop; sync ones run on daemon threads, at most
``concurrency`` at once per ``make`` (its :class:`~openenv_zmq.worker.kinds.Runtime`) and
``max_threads`` in all. A call that outruns its deadline is abandoned: a coroutine is cancelled,
but a thread cannot be stopped, so it runs on until the env returns (its result is dropped) and
holds one of the ``max_threads`` until then.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

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
        self._semaphores: weakref.WeakKeyDictionary[Runtime, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self._lanes: weakref.WeakKeyDictionary[Runtime, _Lane] = weakref.WeakKeyDictionary()

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
        if call.mode is Mode.THREAD:
            await self._on_thread(call)
            return
        semaphore = self._semaphore(call.slot.runtime)
        async with semaphore or contextlib.nullcontext():
            try:
                await asyncio.wait_for(call.run_async(), call.wait_s)
            except TimeoutError:
                call.timed_out = True

    async def _on_thread(self, call: Call) -> None:
        job = _Job(call.run, asyncio.get_running_loop(), self._lane(call.slot.runtime))
        self._threads.run(job)
        if call.wait_s is None:
            await job.done
            return
        await job.started  # time spent queued behind the make's concurrency does not count
        try:
            await asyncio.wait_for(job.done, call.wait_s)
        except TimeoutError:
            call.timed_out = True
            self._threads.abandon(job)

    def _semaphore(self, runtime: Runtime) -> asyncio.Semaphore | None:
        """What bounds an async env's calls: its ``concurrency``, if it set one."""
        if runtime.concurrency is None:
            return None
        semaphore = self._semaphores.get(runtime)
        if semaphore is None:
            semaphore = self._semaphores[runtime] = asyncio.Semaphore(runtime.concurrency)
        return semaphore

    def _lane(self, runtime: Runtime) -> _Lane:
        """The lane of a sync env's calls: ``concurrency`` at once, or one at a time for an env
        off the worker's thread only for a deadline."""
        lane = self._lanes.get(runtime)
        if lane is None:
            lane = self._lanes[runtime] = _Lane(runtime.concurrency or 1)
        return lane


async def _cancel_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _Job:
    """One call to run on a thread, and the futures (on the runner's loop) that say when it
    started and when it ended."""

    __slots__ = ("abandoned", "done", "finished", "fn", "lane", "loop", "started")

    def __init__(self, fn: Callable[[], None], loop: asyncio.AbstractEventLoop, lane: _Lane):
        self.fn = fn
        self.loop = loop
        self.lane = lane
        self.started: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.finished = False
        """The env returned (set under the threads' lock)."""
        self.abandoned = False
        """Given up at its deadline (set under the threads' lock)."""

    def execute(self) -> None:
        self._resolve(self.started)
        try:
            self.fn()
        except BaseException:  # Call.run catches what the env raises; this is a bug
            log.exception("a call on a worker thread raised")
        self._resolve(self.done)

    def _resolve(self, future: asyncio.Future[None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
            self.loop.call_soon_threadsafe(_resolve, future)


class _Lane:
    """The thread calls of one ``make``: at most ``limit`` run at once and the rest wait here.
    A thread that ends one takes the next itself, without a round trip through the loop."""

    __slots__ = ("limit", "queued", "running")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self.queued: collections.deque[_Job] = collections.deque()


class _DaemonThreads:
    """At most ``limit`` daemon threads, started as work arrives and then kept.

    Not a ``ThreadPoolExecutor``: its threads are joined when the interpreter exits, so one env
    stuck in an abandoned step would keep the worker process from ever exiting.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        """Guards the counts here and every lane's."""
        self._started = 0
        self._waiting = 0
        """Jobs handed to the threads that none has taken yet, less the threads idle."""

    def run(self, job: _Job) -> None:
        """Run ``job`` on a thread now, or when its lane has room."""
        with self._lock:
            lane = job.lane
            if lane.running >= lane.limit:
                lane.queued.append(job)
                return
            lane.running += 1
            self._hand_out(job)

    def abandon(self, job: _Job) -> None:
        """Give up on a job past its deadline: its lane's room goes to the next job, though its
        thread is still in the env (it goes idle once the env returns)."""
        with self._lock:
            if job.abandoned or job.finished:
                return
            job.abandoned = True
            following = self._next_in(job.lane)
            if following is not None:
                self._hand_out(following)

    def close(self) -> None:
        """Let idle threads end; busy ones end after their job."""
        for _ in range(self._started):
            self._jobs.put(None)

    def _hand_out(self, job: _Job) -> None:
        """Queue ``job`` for the threads, starting one if none is idle (the lock is held)."""
        self._waiting += 1
        if self._waiting > 0 and self._started < self._limit:
            self._started += 1
            self._waiting -= 1  # the new thread takes it, or another job as soon
            threading.Thread(target=self._serve, name="worker-env", daemon=True).start()
        self._jobs.put(job)

    def _next_in(self, lane: _Lane) -> _Job | None:
        """A lane's room was freed: its next job, counted as running, or ``None`` (the lock is
        held)."""
        if lane.queued:
            return lane.queued.popleft()
        lane.running -= 1
        return None

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            while job is not None:
                job.execute()
                with self._lock:
                    job.finished = True
                    # an abandoned job's room went to the next one at its deadline
                    job = None if job.abandoned else self._next_in(job.lane)
                    if job is None:
                        self._waiting -= 1  # idle again: one more queued job needs no new thread


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # cancelled when the call outran its deadline
        future.set_result(None)
