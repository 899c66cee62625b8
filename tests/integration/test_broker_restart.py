"""A broker started again at the same address never lets a group made before step another's envs."""

from __future__ import annotations

import signal

from echo_env import EchoAction

from bench.faults.cluster import alive
from openenv_zmq import BatchClient
from openenv_zmq.errors import EnvNotOnWorker
from tests.processes import Processes, free_port, wait_until

TIMEOUT = 10.0


def test_a_group_from_before_a_broker_restart_gets_env_not_on_worker(procs: Processes) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    first = procs.broker(workers=2, bind=address)
    with BatchClient(address, connect_timeout=TIMEOUT, timeout=TIMEOUT) as a:
        old = a.make("echo", num_envs=8)
        old.reset()
        workers = first.worker_pids()
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        wait_until(lambda: not any(alive(p) for p in workers), TIMEOUT, "its workers to exit")

        procs.broker(workers=2, bind=address)
        with BatchClient(address, connect_timeout=TIMEOUT, timeout=TIMEOUT) as b:
            new = b.make("echo", num_envs=8)
            new.reset()
            # A's client reconnects to the same address by itself: this reaches the new broker.
            r = old.step([EchoAction(message="stale")] * 8)
            assert set(r.errors) == set(old.env_ids.tolist()), r.errors
            assert {type(e) for e in r.errors.values()} == {EnvNotOnWorker}
            assert "earlier broker" in str(next(iter(r.errors.values())))
            assert r.dones.all()
            assert [s.step_count for s in new.state()] == [0] * 8, "B's envs did not advance"
            assert not set(old.env_ids.tolist()) & set(new.env_ids.tolist())
