"""Workers as local processes, started with the ``spawn`` method and replaced when they die."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from multiprocessing.process import BaseProcess
from typing import Any

from broker.children import start_child
from broker.providers.slots import WorkerSlot, check_not_all_given_up

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 5.0
"""How long a worker gets to send BYE and exit after SIGTERM before it is killed."""

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


class LocalProvider:
    """Keeps ``count`` worker processes running on this host.

    ``worker_kwargs`` are passed to :func:`openenv_zmq.worker.loop.run_worker` (``envs``,
    ``capacity``, ``heartbeat_interval``, ...); ``app_dir`` is a folder the workers import envs
    from (``--app-dir``). A worker that exits is restarted as :mod:`broker.providers.slots`
    says; when every worker has been given up, :meth:`poll` raises :class:`WorkersFailing`.
    """

    def __init__(self, count: int, app_dir: str | None = None, **worker_kwargs: Any) -> None:
        self.count = count
        self.app_dir = app_dir
        self.worker_kwargs = worker_kwargs
        self._context = multiprocessing.get_context("spawn")
        self._slots = [WorkerSlot(i, "local") for i in range(count)]
        self._processes: dict[int, BaseProcess] = {}
        self._connect = ""

    @property
    def extra_backend(self) -> str | None:
        return None

    def start(self, connect: str) -> None:
        self._connect = connect
        for slot in self._slots:
            self._launch(slot)

    def _launch(self, slot: WorkerSlot) -> None:
        slot.launching(time.monotonic())
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
        start_child(process)
        self._processes[slot.index] = process
        log.info("started worker %s (pid %s)", slot.name, process.pid)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes.values() if p.pid]

    def poll(self) -> list[bytes]:
        exited: list[bytes] = []
        now = time.monotonic()
        for slot in self._slots:
            process = self._processes.get(slot.index)
            if process is not None and not process.is_alive():
                exited.append(slot.identity)
                code = process.exitcode
                log.warning("worker %s exited with code %s", slot.name, code)
                process.close()
                del self._processes[slot.index]
                slot.ended(now, f"exited with code {code}")
            if slot.due(now):
                self._launch(slot)
        check_not_all_given_up(self._slots)
        return exited

    def worker_died(self, identity: bytes) -> None:
        for slot in self._slots:
            process = self._processes.get(slot.index)
            if slot.identity == identity and process is not None and process.is_alive():
                log.warning("killing worker %s: the broker declared it dead", slot.name)
                process.kill()

    def stop(self) -> None:
        running = list(self._processes.values())
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
        self._processes.clear()
        for slot in self._slots:
            slot.stopped()
