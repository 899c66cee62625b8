"""``openenv-broker bench``: step a batch of envs for a while and report throughput and latency."""

from __future__ import annotations

import contextlib
import multiprocessing
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from broker.cluster import ClusterSpec, run_cluster
from openenv_zmq.client.sync import BatchClient
from openenv_zmq.curve import CurveKeys

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


@contextlib.contextmanager
def embedded_cluster(workers: int, envs: Sequence[str], capacity: int) -> Iterator[str]:
    """A broker process with ``workers`` local workers on private ipc sockets; yields its address.

    The broker runs in its own (spawned) process so that it does not share the GIL with the
    client being measured. Everything is stopped and the socket files removed on exit.
    """
    folder = tempfile.mkdtemp(prefix="openenv-zmq-")
    spec = ClusterSpec(
        frontend=f"ipc://{folder}/frontend.sock",
        backend=f"ipc://{folder}/backend.sock",
        workers=workers,
        envs=tuple(envs),
        capacity=capacity,
    )
    process = multiprocessing.get_context("spawn").Process(
        target=run_cluster, args=(spec,), name="openenv-broker"
    )
    process.start()
    try:
        yield spec.frontend
    finally:
        process.terminate()
        process.join(CLUSTER_STOP_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join()
        process.close()
        shutil.rmtree(folder, ignore_errors=True)


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
