"""``openenv-broker bench``: step a batch of envs for a while and report throughput and latency."""

from __future__ import annotations

import contextlib
import multiprocessing
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from multiprocessing.process import BaseProcess
from queue import Empty
from typing import Any, Literal

import numpy as np

from broker.cluster import ClusterSpec, run_cluster
from broker.keys import BrokerKeys
from broker.loop import BrokerServer
from broker.providers.docker import DockerWorkers
from openenv_zmq.client.sync import BatchClient
from openenv_zmq.curve import CurveKeys
from openenv_zmq.registry import resolve_env

CLUSTER_START_TIMEOUT = 30.0
CLUSTER_STOP_TIMEOUT = 15.0
WARMUP_BATCHES = 3


@dataclass(frozen=True)
class BenchReport:
    env: str
    num_envs: int
    workers: int
    batches: int
    env_steps: int
    seconds: float
    env_steps_per_s: float
    batch_p50_ms: float
    batch_p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


EMBEDDED_BROKER = "openenv-broker"
"""The name of :func:`embedded_cluster`'s broker process."""


def embedded_broker_pid() -> int:
    """The pid of the broker :func:`embedded_cluster` runs for this process."""
    [broker] = [p for p in multiprocessing.active_children() if p.name == EMBEDDED_BROKER]
    assert broker.pid is not None
    return broker.pid


@contextlib.contextmanager
def embedded_cluster(
    workers: int,
    envs: Sequence[str],
    capacity: int,
    *,
    transport: Literal["ipc", "tcp"] = "ipc",
    curve: BrokerKeys | None = None,
    docker: DockerWorkers | None = None,
) -> Iterator[str]:
    """A broker process with ``workers`` local workers; yields its client address.

    Its sockets are private ipc sockets (in a fresh 0700 folder), or with ``transport="tcp"``
    random ports on 127.0.0.1. With ``curve`` both are CURVE servers with those keys; a client
    connects with ``curve.local_client``. With ``docker`` the workers are containers made as it
    says. The broker runs in its own (spawned) process so that
    it does not share the GIL with the client being measured. Everything is stopped and the
    socket files removed on exit.
    """
    folder = tempfile.mkdtemp(prefix="openenv-zmq-")
    if transport == "ipc":
        frontend, backend = f"ipc://{folder}/frontend.sock", f"ipc://{folder}/backend.sock"
    else:
        frontend = backend = "tcp://127.0.0.1:*"
    spec = ClusterSpec(
        frontend=frontend,
        backend=backend,
        workers=workers,
        envs=tuple(envs),
        capacity=capacity,
        curve=curve,
        docker=docker,
    )
    context = multiprocessing.get_context("spawn")
    bound: multiprocessing.Queue[str] = context.Queue()
    process = context.Process(
        target=run_cluster, args=(spec, partial(_report_address, bound)), name=EMBEDDED_BROKER
    )
    process.start()
    try:
        yield _wait_for_address(bound, process)
    finally:
        process.terminate()
        process.join(CLUSTER_STOP_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join()
        process.close()
        bound.close()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def cluster_at(
    address: str | None, env: str, workers: int = 2, capacity: int = 4096
) -> Iterator[str]:
    """``address`` as given, or else an :func:`embedded_cluster` of ``workers`` local workers
    hosting ``env``, yielded once one of them is live (what the examples and benchmarks run on
    by default). Raises :class:`EnvNotFound` at once for an env this process cannot resolve: a
    worker that cannot exits before joining, which would otherwise show as a join timeout.
    """
    if address is not None:
        yield address
        return
    resolve_env(env)
    with embedded_cluster(workers, [env], capacity) as embedded:
        with BatchClient(embedded, connect_timeout=CLUSTER_START_TIMEOUT) as client:
            client.wait_for_workers(1, env, CLUSTER_START_TIMEOUT)
        yield embedded


def _report_address(queue: multiprocessing.Queue[str], server: BrokerServer) -> None:
    """Called in the broker's process once it is bound: a tcp port is known only then."""
    queue.put(server.frontend_address)


def _wait_for_address(queue: multiprocessing.Queue[str], process: BaseProcess) -> str:
    deadline = time.monotonic() + CLUSTER_START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            return queue.get(timeout=0.1)
        except Empty:
            if not process.is_alive():
                break
    raise RuntimeError(f"the embedded broker did not start (exit code {process.exitcode})")


def run_bench(
    address: str,
    env: str,
    num_envs: int,
    duration: float,
    action: Any,
    min_workers: int = 1,
    on_batch: Callable[[float], None] | None = None,
    curve: CurveKeys | None = None,
) -> BenchReport:
    """Step ``num_envs`` envs with ``action`` in full batches for ``duration`` seconds.

    First waits for ``min_workers`` workers hosting ``env`` to join. ``on_batch`` gets the
    elapsed seconds after every measured batch (for a progress bar). ``curve``: the client's
    keys for a CURVE broker.
    """
    with BatchClient(address, connect_timeout=CLUSTER_START_TIMEOUT, curve_dir=curve) as client:
        hosts = client.wait_for_workers(min_workers, env, CLUSTER_START_TIMEOUT)
        group = client.make(env, num_envs)
        group.reset(seed=0)
        actions = [action] * num_envs
        for _ in range(WARMUP_BATCHES):
            group.step(actions)
        latencies: list[float] = []
        start = time.perf_counter()
        elapsed = 0.0
        while elapsed < duration:
            t0 = time.perf_counter()
            result = group.step(actions)
            latencies.append(time.perf_counter() - t0)
            result.raise_for_errors()
            elapsed = time.perf_counter() - start
            if on_batch is not None:
                on_batch(elapsed)
        group.close()
    lat_ms = np.asarray(latencies) * 1000.0
    env_steps = len(latencies) * num_envs
    return BenchReport(
        env=env,
        num_envs=num_envs,
        workers=len(hosts),
        batches=len(latencies),
        env_steps=env_steps,
        seconds=elapsed,
        env_steps_per_s=env_steps / elapsed,
        batch_p50_ms=float(np.percentile(lat_ms, 50)),
        batch_p99_ms=float(np.percentile(lat_ms, 99)),
    )
