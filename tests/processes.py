"""Real broker and worker processes on loopback or ipc, and checks that nothing leaks.

Shared by the folders whose tests start processes (``integration``, ``openenv_compat``): each
folder's ``conftest.py`` takes the fixtures it wants from here.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq

from bench.faults.cluster import BrokerGone, alive, descendants, read_addresses
from openenv_zmq import BatchClient
from openenv_zmq.curve import CurveKeys

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    """A port nothing listens on right now (for refused-connection tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(app: Any, **config: Any) -> Iterator[str]:
    """An ASGI ``app`` under uvicorn in a thread on a random 127.0.0.1 port; yields its
    ``http://`` base URL and stops the server (failing the test if it does not stop)."""
    import uvicorn

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, **{"log_level": "warning", "lifespan": "on", **config})
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name="uvicorn", daemon=True
    )
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 30, "uvicorn to start")
        assert server.started, "the server failed to start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        listener.close()
        assert not thread.is_alive(), "the server did not stop"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "broker", *args]


@dataclass
class Broker:
    """A broker started with ``openenv-broker start`` in its own process."""

    process: subprocess.Popen[bytes]
    frontend: str
    backend: str
    heartbeat: float
    descendants: set[int] = field(default_factory=set)
    client_keys: CurveKeys | None = None
    """The keys the test's own clients use, for a broker started with ``--curve-dir``."""

    def client(self) -> BatchClient:
        return BatchClient(self.frontend, connect_timeout=START_TIMEOUT, curve_dir=self.client_keys)

    def worker_pids(self) -> set[int]:
        pids = descendants(self.process.pid)
        self.descendants |= pids
        return pids

    def live_workers(self) -> list[dict[str, Any]]:
        with self.client() as client:
            return client.workers()

    def wait_for_workers(self, count: int) -> None:
        with self.client() as client:
            client.wait_for_workers(count, timeout=START_TIMEOUT)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.worker_pids()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(STOP_TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code


@dataclass
class Processes:
    """Starts brokers and workers for a test and checks at the end that none is left."""

    folder: Path
    brokers: list[Broker] = field(default_factory=list)
    workers: list[subprocess.Popen[str]] = field(default_factory=list)

    def broker(
        self,
        workers: int = 2,
        envs: tuple[str, ...] = ("echo",),
        heartbeat: float = 0.5,
        transport: str = "tcp",
        extra: tuple[str, ...] = (),
        bind: str | None = None,
        client_keys: CurveKeys | None = None,
        log: Path | None = None,
        own_group: bool = False,
        wait: bool = True,
    ) -> Broker:
        """A broker with ``workers`` local workers; ``bind`` is its client address (a fresh
        one of ``transport`` by default), e.g. an earlier broker's, to start it again.
        ``client_keys``: what the test's clients connect with (a ``--curve-dir`` broker);
        ``log``: a file its stderr (the log) goes to; ``own_group``: it leads a process group
        of its own, as a command started from a terminal does (Ctrl-C signals the group);
        ``wait``: return once the workers joined (else once the broker is ready)."""
        if transport == "tcp":
            front, worker_bind = "tcp://127.0.0.1:*", "tcp://127.0.0.1:*"
        else:
            n = len(self.brokers)
            front = f"ipc://{self.folder}/front{n}.sock"
            worker_bind = f"ipc://{self.folder}/back{n}.sock"
        bind = bind or front
        args = ["start", "--bind", bind, "--worker-bind", worker_bind, "--workers", str(workers)]
        args += ["--heartbeat", str(heartbeat), *extra]
        for env in envs:
            args += ["--env", env]
        with contextlib.ExitStack() as files:
            stderr = None if log is None else files.enter_context(log.open("ab"))
            process = subprocess.Popen(
                cli(*args),
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=stderr,
                bufsize=0,
                process_group=0 if own_group else None,
            )
        try:
            frontend, backend = read_addresses(process, START_TIMEOUT)
        except BrokerGone:
            process.kill()
            process.wait()
            assert process.stdout is not None
            process.stdout.close()
            raise
        broker = Broker(process, frontend, backend, heartbeat, client_keys=client_keys)
        self.brokers.append(broker)
        if workers and wait:
            broker.wait_for_workers(workers)
        return broker

    def worker(
        self,
        connect: str,
        envs: tuple[str, ...] = ("echo",),
        heartbeat: float = 0.5,
        extra: tuple[str, ...] = (),
    ) -> subprocess.Popen[str]:
        args = ["worker", "--connect", connect, "--heartbeat", str(heartbeat), *extra]
        for env in envs:
            args += ["--env", env]
        process = subprocess.Popen(cli(*args), cwd=REPO_ROOT, text=True)
        self.workers.append(process)
        return process

    def cleanup(self) -> list[str]:
        problems = []
        for broker in self.brokers:
            if broker.process.poll() is None:
                broker.stop()
        for process in self.workers:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                    problems.append(f"worker {process.pid} ignored SIGTERM")
        leftovers = set()
        for broker in self.brokers:
            leftovers |= {pid for pid in broker.descendants if alive(pid)}
        if leftovers:
            try:
                wait_until(lambda: not any(alive(p) for p in leftovers), 10, "workers to exit")
            except AssertionError:
                for pid in leftovers:
                    if alive(pid):
                        os.kill(pid, signal.SIGKILL)
                problems.append(f"processes outlived their broker: {sorted(leftovers)}")
        sockets = sorted(p.name for p in self.folder.glob("*.sock"))
        if sockets:
            problems.append(f"ipc files left behind: {sockets}")
        return problems


@contextlib.contextmanager
def running(folder: Path) -> Iterator[Processes]:
    """Brokers and workers started in the block; all must end cleanly when it exits."""
    processes = Processes(folder)
    try:
        yield processes
    finally:
        problems = processes.cleanup()
    assert not problems, "; ".join(problems)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Start brokers/workers with ``procs.broker()`` / ``procs.worker()``; all must end cleanly."""
    with running(tmp_path) as processes:
        yield processes


@pytest.fixture(autouse=True)
def no_leaked_sockets() -> Iterator[None]:
    """Fail a test that leaves a zmq socket open: the shared context must terminate."""
    yield
    gc.collect()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    finished = threading.Event()

    def terminate() -> None:
        context.term()
        finished.set()

    threading.Thread(target=terminate, name="ctx-term", daemon=True).start()
    assert finished.wait(5), "a zmq socket was left open: the context could not terminate"
