"""A worker told to stop (SIGTERM, as Kubernetes sends on scale-down) drains: real processes.

``openenv-broker start --workers 0`` and ``openenv-broker worker`` processes, as a cluster runs
them: the draining worker takes no new envs and serves its own until it leaves; then they answer
``SessionLost`` and a reset places them on another worker.
"""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Any

import pytest
from echo_env import EchoAction

from openenv_zmq import BatchClient
from openenv_zmq.errors import SessionLost
from tests.processes import Processes, wait_until

pytestmark = pytest.mark.integration

HEARTBEAT = 0.5


def by_name(client: BatchClient) -> dict[str, dict[str, Any]]:
    """The broker's status rows of the workers it knows, by name (the latest of a name)."""
    return {w["name"]: w for w in client.status()["workers"]}


def start_worker(procs: Processes, address: str, name: str, drain_timeout: float) -> Any:
    extra = ("--name", name, "--drain-timeout", str(drain_timeout))
    return procs.worker(address, heartbeat=HEARTBEAT, extra=extra)


def test_a_draining_worker_serves_its_envs_until_it_leaves_then_they_move(
    procs: Processes,
) -> None:
    broker = procs.broker(workers=0, heartbeat=HEARTBEAT)
    drain_timeout = 3.0
    leaving = start_worker(procs, broker.backend, "leaving", drain_timeout)
    with BatchClient(broker.frontend) as client:
        client.wait_for_workers(1)
        envs = client.make("echo", num_envs=4)  # all on "leaving": it is the only worker
        envs.reset()
        start_worker(procs, broker.backend, "staying", drain_timeout)
        client.wait_for_workers(2)

        signalled_at = time.monotonic()
        leaving.send_signal(signal.SIGTERM)
        wait_until(
            lambda: by_name(client)["leaving"]["state"] == "DRAINING", 10, "the worker to drain"
        )
        # New envs go to the other worker only.
        other = client.make("echo", num_envs=2)
        rows = by_name(client)
        assert (rows["leaving"]["used"], rows["leaving"]["free"]) == (4, 0)
        assert rows["staying"]["used"] == 2
        assert [w["name"] for w in client.workers()] == ["staying"]  # the ones taking envs
        # Its own envs are served on while it drains.
        steps_while_draining = 0
        while leaving.poll() is None:
            r = envs.step([EchoAction(message="still here")] * 4)
            if r.errors:
                break  # it left between the check and the step
            assert [o.echoed_message for o in r.observations] == ["still here"] * 4
            steps_while_draining += 1
            time.sleep(0.05)
        assert steps_while_draining > 0
        assert leaving.wait(15) == 0
        assert time.monotonic() - signalled_at >= drain_timeout - 0.5  # its envs kept it there

        wait_until(lambda: by_name(client)["leaving"]["state"] == "DEAD", 10, "the worker gone")
        r = envs.step([EchoAction(message="lost")] * 4)
        assert {type(e) for e in r.errors.values()} == {SessionLost}
        assert set(r.errors) == set(envs.env_ids.tolist())
        r = envs.reset(env_ids=envs.env_ids)
        assert not r.errors, r.errors
        r = envs.step([EchoAction(message="moved")] * 4)
        assert not r.errors, r.errors
        assert by_name(client)["staying"]["used"] == 6
        assert not other.reset().errors


def test_a_drain_ends_when_its_envs_close_or_at_a_second_signal(procs: Processes) -> None:
    broker = procs.broker(workers=0, heartbeat=HEARTBEAT)
    first = start_worker(procs, broker.backend, "first", drain_timeout=60.0)
    with BatchClient(broker.frontend) as client:
        client.wait_for_workers(1)
        on_first = client.make("echo", num_envs=2)
        second = start_worker(procs, broker.backend, "second", drain_timeout=60.0)
        client.wait_for_workers(2)
        on_second = client.make("echo", num_envs=2)  # the least loaded worker: "second"
        assert by_name(client)["second"]["used"] == 2

        for process in (first, second):
            process.send_signal(signal.SIGTERM)
        wait_until(
            lambda: {w["state"] for w in by_name(client).values()} == {"DRAINING"},
            10,
            "both workers to drain",
        )
        on_first.close()
        assert wait_exit(first, 10) == 0  # its envs are closed: it leaves long before 60 s
        assert second.poll() is None  # still draining: its envs are open
        second.send_signal(signal.SIGTERM)
        assert wait_exit(second, 10) == 0
        r = on_second.step([EchoAction(message="gone")] * 2)
        assert {type(e) for e in r.errors.values()} == {SessionLost}


def wait_exit(process: subprocess.Popen[str], timeout: float) -> int | None:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None
