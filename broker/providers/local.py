"""Workers as local processes, started with the ``spawn`` method and replaced when they die."""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import threading
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

from openenv_zmq.errors import WorkersFailing

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 5.0
"""How long a worker gets to send BYE and exit after SIGTERM before it is killed."""
MAX_RESTART_DELAY = 10.0
SHORT_LIFE_SECONDS = 5.0
"""A worker that dies sooner than this after starting is restarted with a growing delay."""
MAX_QUICK_DEATHS = 5
"""A worker that died this many times in a row right after starting is not started again: what
kills it (a broken env, a missing dependency, no memory) will not go away on its own."""

_PARENT_CHECK_SECONDS = 0.5


def _run_local_worker(parent_pid: int, app_dir: str | None, **worker_kwargs: Any) -> None:
    """Entry point of a local worker process: a worker that exits when its broker does."""
    from openenv_zmq.registry import add_app_dir
    from openenv_zmq.worker.loop import run_worker

    if app_dir is not None:
        add_app_dir(app_dir)
    stop = threading.Event()

    def watch_parent() -> None:
        # A broker killed with SIGKILL cannot stop its workers; they notice it here instead.
        while not stop.wait(_PARENT_CHECK_SECONDS):
            if os.getppid() != parent_pid:
                stop.set()

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    run_worker(stop=stop, **worker_kwargs)


@dataclass
class _Slot:
    """One of the provider's worker positions; its process is replaced when it dies."""

    index: int
    process: BaseProcess | None = None
    name: str = ""
    identity: bytes = b""
    """The socket identity its current process registers with: the broker tells this process
    from any peer by it (a name is only a label, which any peer can claim)."""
    generation: int = 0
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None
    given_up: str = ""
    """How its last process ended, once it is not started again."""


class LocalProvider:
    """Keeps ``count`` worker processes running on this host.

    ``worker_kwargs`` are passed to :func:`openenv_zmq.worker.loop.run_worker` (``envs``,
    ``capacity``, ``heartbeat_interval``, ...); ``app_dir`` is a folder the workers import envs
    from (``--app-dir``). A worker that exits is restarted at once, or after a growing delay (up
    to 10 s) when it keeps dying right after starting, and not again after
    :data:`MAX_QUICK_DEATHS` such deaths in a row; when no worker is left that way, :meth:`poll`
    raises :class:`WorkersFailing`.
    """

    def __init__(self, count: int, app_dir: str | None = None, **worker_kwargs: Any) -> None:
        self.count = count
        self.app_dir = app_dir
        self.worker_kwargs = worker_kwargs
        self._context = multiprocessing.get_context("spawn")
        self._slots = [_Slot(i) for i in range(count)]
        self._connect = ""

    def start(self, connect: str) -> None:
        self._connect = connect
        for slot in self._slots:
            self._launch(slot)

    def _launch(self, slot: _Slot) -> None:
        slot.generation += 1
        slot.name = f"local-{slot.index}" + (
            f".{slot.generation - 1}" if slot.generation > 1 else ""
        )
        slot.identity = f"{slot.name}-{secrets.token_hex(16)}".encode()
        process = self._context.Process(
            target=_run_local_worker,
            kwargs={
                "parent_pid": os.getpid(),
                "app_dir": self.app_dir,
                "connect": self._connect,
                "name": slot.name,
                "identity": slot.identity,
                "provider": "local",
                **self.worker_kwargs,
            },
            name=f"openenv-worker-{slot.name}",
        )
        process.start()
        slot.process, slot.started_at, slot.restart_at = process, time.monotonic(), None
        log.info("started worker %s (pid %s)", slot.name, process.pid)

    @property
    def pids(self) -> list[int]:
        return [s.process.pid for s in self._slots if s.process is not None and s.process.pid]

    def poll(self) -> list[bytes]:
        exited: list[bytes] = []
        now = time.monotonic()
        for slot in self._slots:
            process = slot.process
            if process is not None and not process.is_alive():
                exited.append(slot.identity)
                code = process.exitcode
                log.warning("worker %s exited with code %s", slot.name, code)
                process.close()
                slot.process = None
                lived = now - slot.started_at
                slot.quick_deaths = slot.quick_deaths + 1 if lived < SHORT_LIFE_SECONDS else 0
                if slot.quick_deaths >= MAX_QUICK_DEATHS:
                    slot.given_up = f"{slot.name} exited with code {code}"
                    log.error(
                        "worker %s died within %g s of starting %d times in a row; not starting "
                        "it again (its own output above says why)",
                        slot.name,
                        SHORT_LIFE_SECONDS,
                        slot.quick_deaths,
                    )
                    continue
                delay = min(MAX_RESTART_DELAY, 0.5 * 2 ** (slot.quick_deaths - 1))
                slot.restart_at = now + (delay if slot.quick_deaths else 0.0)
            if slot.process is None and slot.restart_at is not None and now >= slot.restart_at:
                self._launch(slot)
        if self._slots and all(slot.given_up for slot in self._slots):
            raise WorkersFailing(
                f"every local worker died within {SHORT_LIFE_SECONDS:g} s of starting, "
                f"{MAX_QUICK_DEATHS} times in a row (last: "
                f"{'; '.join(slot.given_up for slot in self._slots)}); the broker stops"
            )
        return exited

    def worker_died(self, identity: bytes) -> None:
        for slot in self._slots:
            if slot.identity == identity and slot.process is not None and slot.process.is_alive():
                log.warning("killing worker %s: the broker declared it dead", slot.name)
                slot.process.kill()

    def stop(self) -> None:
        running = [s.process for s in self._slots if s.process is not None]
        for process in running:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
            process.close()
        for slot in self._slots:
            slot.process, slot.restart_at = None, None
