"""Envs that wait, in real broker and worker processes: a worker keeps serving other groups while
a slow sub-batch is pending, and a step abandoned at its deadline does not keep the worker up."""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx
import pytest
from echo_env import EchoAction

from openenv_zmq import BatchClient
from openenv_zmq.errors import RequestTimeout, StepTimeout
from openenv_zmq.gateway import create_gateway_app
from tests.processes import Processes, serving
from tests.unit.worker_envs import ASYNC_WAIT, BLOCKING_WAIT, WaitAction

pytestmark = pytest.mark.integration

SLOW_SECONDS = 2.0


def fast_step_latencies(client: BatchClient, steps: int = 20) -> list[float]:
    envs = client.make("echo", 16)
    envs.reset()
    latencies = []
    for _ in range(steps):
        start = time.perf_counter()
        r = envs.step([EchoAction(message="hi")] * 16)
        latencies.append(time.perf_counter() - start)
        assert r.errors == {}
    envs.close()
    return latencies


@pytest.mark.parametrize(
    ("env", "options"), [(ASYNC_WAIT, {}), (BLOCKING_WAIT, {"concurrency": 16})]
)
def test_a_fast_group_steps_on_while_a_slow_one_waits_on_the_same_worker(
    procs: Processes, env: str, options: dict[str, Any]
) -> None:
    broker = procs.broker(workers=1, envs=(env, "echo"))
    with BatchClient(broker.frontend) as client:
        before = statistics.median(fast_step_latencies(client))
        slow = client.make(env, 16, **options)
        slow.reset()
        sent = time.perf_counter()
        slow.send([WaitAction(seconds=SLOW_SECONDS)] * 16)
        during = fast_step_latencies(client)
        # every fast step was answered while the slow sub-batch was still pending
        assert time.perf_counter() - sent < SLOW_SECONDS
        with pytest.raises(RequestTimeout):
            slow.recv(timeout=0)
        r = slow.recv(timeout=10)
        assert r.errors == {} and len(r.env_ids) == 16
        # 16 steps of 2 s each, answered together rather than one after the other
        assert time.perf_counter() - sent < 4 * SLOW_SECONDS
    assert statistics.median(during) <= max(10 * before, 0.05)


def test_a_worker_with_a_step_stuck_past_its_deadline_still_stops(procs: Processes) -> None:
    broker = procs.broker(workers=1, envs=(BLOCKING_WAIT,))
    with BatchClient(broker.frontend) as client:
        envs = client.make(BLOCKING_WAIT, 2, timeout_s=0.3)
        envs.reset()
        r = envs.step([WaitAction(seconds=600.0), WaitAction()])
        assert isinstance(r.errors[int(envs.env_ids[0])], StepTimeout)
        assert r.observations[1] is not None
        # the worker goes on serving; the stuck thread holds nothing the env needs
        envs.reset(env_ids=envs.env_ids[:1])
        assert envs.step([WaitAction(), WaitAction()]).errors == {}
    assert broker.stop() == 0  # the procs fixture then checks no worker outlived it


def test_the_gateway_passes_a_post_step_timeout_on_as_the_steps_deadline(
    procs: Processes,
) -> None:
    broker = procs.broker(workers=1, envs=(BLOCKING_WAIT,))
    with (
        serving(create_gateway_app(broker.frontend, BLOCKING_WAIT, max_sessions=2)) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        quick = http.post("/step", json={"action": {"seconds": 0.0}, "timeout_s": 5})
        assert quick.status_code == 200 and quick.json()["observation"]["waited"] == 0.0
        start = time.perf_counter()
        slow = http.post("/step", json={"action": {"seconds": 30.0}, "timeout_s": 0.3})
        assert time.perf_counter() - start < 10
        detail = slow.json()["detail"]
        assert slow.status_code == 500 and detail["type"] == "StepTimeout"
        assert "deadline of 0.3 s" in detail["message"]
