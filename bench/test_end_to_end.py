"""Batch steps through a real broker and local workers: one benchmark per env x workers x size.

Each records ``env_steps_per_s`` (num_envs over the median batch time) in its ``extra_info``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.baselines import (
    CLUSTER_START_TIMEOUT,
    STEP_TIMEOUT,
    ActionsFactory,
    cartpole_actions,
    echo_actions,
)
from broker.bench import embedded_cluster
from openenv_zmq.client.sync import BatchClient

WARMUP_STEPS = 3
CAPACITY = {"echo": 1024, "cartpole": 8192}
"""Slots per worker: the largest size each env is measured at below."""
ACTIONS: dict[str, ActionsFactory] = {"echo": echo_actions, "cartpole": cartpole_actions}
CASES = [
    # grouped by (env, workers): consecutive cases share one cluster
    ("echo", 1, 256),
    ("echo", 1, 1024),
    ("echo", 2, 256),
    ("echo", 2, 1024),
    ("cartpole", 1, 1024),
    ("cartpole", 1, 8192),
    ("cartpole", 2, 1024),
    ("cartpole", 2, 8192),
]


class Clusters:
    """One embedded cluster at a time, kept while consecutive tests ask for the same one."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._key: tuple[str, int] | None = None
        self._address = ""

    def address(self, env: str, workers: int) -> str:
        if self._key != (env, workers):
            self.close()
            self._stack = contextlib.ExitStack()
            self._address = self._stack.enter_context(
                embedded_cluster(workers, [env], CAPACITY[env])
            )
            self._key = (env, workers)
        return self._address

    def close(self) -> None:
        self._key = None
        self._stack.close()


@pytest.fixture(scope="module")
def clusters() -> Iterator[Clusters]:
    pool = Clusters()
    try:
        yield pool
    finally:
        pool.close()


@pytest.mark.parametrize(("env", "workers", "num_envs"), CASES)
def test_step_throughput(
    benchmark: BenchmarkFixture, clusters: Clusters, env: str, workers: int, num_envs: int
) -> None:
    address = clusters.address(env, workers)
    actions = ACTIONS[env](num_envs)
    with BatchClient(
        address, connect_timeout=CLUSTER_START_TIMEOUT, timeout=STEP_TIMEOUT
    ) as client:
        client.wait_for_workers(workers, env, CLUSTER_START_TIMEOUT)
        with client.make(env, num_envs, autoreset="next_step") as group:
            group.reset(seed=0)
            for _ in range(WARMUP_STEPS):
                group.step(actions)
            result = benchmark(group.step, actions)
    assert not result.errors
    assert len(result.env_ids) == num_envs
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["env_steps_per_s"] = num_envs / benchmark.stats.stats.median
