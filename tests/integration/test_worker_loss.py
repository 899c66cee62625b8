"""Every request gets exactly one answer, even when a worker is killed mid-step."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
from echo_env import EchoAction

from openenv_zmq import BatchClient
from openenv_zmq.errors import SessionLost, WorkerLost
from tests.processes import Processes, wait_until

SLOW = "tests.integration.fixture_envs:SlowEchoEnv"


def kill_mid_step_and_check(client: BatchClient, heartbeat: float) -> None:
    """Kill -9 the worker of half the envs while both halves are being stepped."""
    wait_until(lambda: len(client.workers()) == 2, 30, "two workers")
    envs = client.make(SLOW, num_envs=16, delay=0.1)  # 8 envs a worker: 0.8 s a sub-batch
    envs.reset()
    workers = client.workers()
    assert [w["used"] for w in workers] == [8, 8], workers
    victim = workers[0]
    envs.send([EchoAction(message="hi")] * 16)
    wait_until(lambda: client.status()["in_flight"] == 2, 5, "both sub-batches in flight")
    killed_at = time.monotonic()
    os.kill(victim["pid"], signal.SIGKILL)

    answered: dict[int, float] = {}
    results = []
    while len(answered) < 16:
        r = envs.recv(timeout=10)
        results.append(r)
        for env_id in r.env_ids.tolist():
            answered[env_id] = time.monotonic() - killed_at
    lost = sorted(i for r in results for i, e in r.errors.items() if isinstance(e, WorkerLost))
    assert len(lost) == 8, "every env of the killed worker is answered with WorkerLost"
    assert max(answered[i] for i in lost) < 3 * heartbeat, answered
    survivors = sorted(set(answered) - set(lost))
    assert all(not r.errors.keys() - set(lost) for r in results)

    r = envs.step([EchoAction(message="again")] * 8, env_ids=lost)
    assert {type(e) for e in r.errors.values()} == {SessionLost}
    assert r.dones.all() and set(r.errors) == set(lost)
    assert "reset()" in str(r.errors[lost[0]])

    r = envs.reset(env_ids=lost)
    assert not r.errors
    assert {o.echoed_message for o in r.observations} == {"Echo environment ready!"}
    r = envs.step([EchoAction(message="back")] * 16)
    assert not r.errors, r.errors
    assert {o.echoed_message for o in r.observations} == {"back"}
    assert np.isin(survivors, envs.env_ids).all()
    hosts = {w["id"] for w in client.workers()}
    assert victim["id"] not in hosts


def test_killed_local_worker_is_answered_replaced_and_its_envs_re_placed(procs: Processes) -> None:
    broker = procs.broker(workers=2, envs=("echo", SLOW), heartbeat=0.5)
    with BatchClient(broker.frontend) as client:
        kill_mid_step_and_check(client, broker.heartbeat)
        wait_until(lambda: len(client.workers()) == 2, 30, "the replacement worker")
        names = [w["name"] for w in client.workers()]
        assert any("." in name for name in names), names  # local-0.1: the second generation


def test_killed_remote_worker_is_found_by_heartbeats(procs: Processes) -> None:
    broker = procs.broker(workers=0, heartbeat=0.5)
    for _ in range(2):
        procs.worker(broker.backend, envs=("echo", SLOW), heartbeat=0.5)
    with BatchClient(broker.frontend) as client:
        kill_mid_step_and_check(client, broker.heartbeat)
        states = {w["state"] for w in client.status()["workers"]}
        assert states == {"READY", "DEAD"}


def test_an_idle_remote_worker_killed_is_dead_at_the_next_send(procs: Processes) -> None:
    # Heartbeats 5 s apart: its silence would take 15 s to tell. The next request finds its
    # connection gone instead, and its envs can be re-placed at once (before: "env id N is
    # live on worker W" until the silence ran out).
    broker = procs.broker(workers=0, heartbeat=5.0)
    for _ in range(2):
        procs.worker(broker.backend, heartbeat=5.0)
    with BatchClient(broker.frontend) as client:
        wait_until(lambda: len(client.workers()) == 2, 30, "two workers")
        envs = client.make("echo", num_envs=8)
        envs.reset()
        victim = client.workers()[0]
        os.kill(victim["pid"], signal.SIGKILL)
        time.sleep(0.5)  # the kernel closes its socket; the broker's ROUTER drops the peer
        started = time.monotonic()
        r = envs.step([EchoAction(message="hi")] * 8)
        lost = sorted(r.errors)
        assert len(lost) == 4 and {type(e) for e in r.errors.values()} == {WorkerLost}
        assert "connection is gone" in str(r.errors[lost[0]])
        assert not envs.reset(env_ids=lost).errors
        assert time.monotonic() - started < 2.0
        assert not envs.step([EchoAction(message="back")] * 8).errors
        [dead] = [w for w in client.status()["workers"] if w["state"] == "DEAD"]
        assert dead["id"] == victim["id"]
