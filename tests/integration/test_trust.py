"""Peers that lie: what a stranger on the broker's sockets can and cannot do to others."""

from __future__ import annotations

import sys
import time

import zmq
from echo_env import EchoAction

from bench.faults.cluster import alive
from openenv_zmq import BatchClient
from openenv_zmq.protocol import Message, Op, encode
from tests.processes import Processes, wait_until

CONTROL = b""
"""The route of the broker's own control messages on a worker's connection."""


def test_a_stranger_with_a_workers_name_cannot_end_that_worker(procs: Processes) -> None:
    # Before: a peer that registered as "local-0" and sent BYE made the broker kill the real
    # local-0 process, whose name it had taken.
    broker = procs.broker(workers=1)
    broker.wait_for_workers(1)
    [real] = broker.live_workers()
    context = zmq.Context()
    stranger = context.socket(zmq.DEALER)
    try:
        stranger.connect(broker.backend)
        ready = {"envs": ["echo"], "capacity": 4, "name": real["name"], "pid": real["pid"]}
        stranger.send_multipart([CONTROL, *encode(Message(Op.READY, meta=ready))])
        assert stranger.poll(10_000), "the stranger was not welcomed"
        stranger.send_multipart([CONTROL, *encode(Message(Op.BYE))])
        time.sleep(1.0)  # the broker's provider poll and kill would have happened by now
    finally:
        stranger.close(linger=0)
        context.term()
    assert alive(real["pid"])
    with BatchClient(broker.frontend) as client:
        wait_until(
            lambda: [w["pid"] for w in client.workers()] == [real["pid"]], 10, "one live worker"
        )
        envs = client.make("echo", num_envs=4)
        envs.reset()
        assert not envs.step([EchoAction(message="still here")] * 4).errors


def test_a_client_never_imports_a_module_a_worker_names(procs: Processes) -> None:
    forged = "tests.integration.forged_env:Env"
    broker = procs.broker(workers=1, envs=(forged,))
    broker.wait_for_workers(1)
    sys.modules.pop("tests.integration.forged_types", None)
    with BatchClient(broker.frontend) as client:
        envs = client.make(forged, num_envs=2)
        r = envs.reset()
        assert not r.errors
        # the worker said "tests.integration.forged_types:Planted"; the client kept a dict
        assert r.observations[0]["echoed_message"] == "planted"
        assert r.observations[0]["planted"] is True
    assert "tests.integration.forged_types" not in sys.modules
