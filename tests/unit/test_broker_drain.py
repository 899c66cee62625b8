"""BrokerCore and a draining worker (it sent DRAIN): no new envs, its own envs served until BYE."""

from __future__ import annotations

import pytest

from broker.core import BrokerCore, ToClient, ToWorker, WorkerDied
from openenv_zmq.protocol import Op, decode
from tests.unit.test_broker_core import (
    CLIENT,
    W1,
    W2,
    alloc,
    assert_error,
    config,
    control,
    counts,
    hello,
    on,
    placed,
    register,
    reply,
    request,
    step,
    to_client,
    to_worker,
    worker_status,
)

W3 = b"worker-3"


@pytest.fixture
def broker() -> BrokerCore:
    return BrokerCore(config(heartbeat_interval=1.0, liveness=2.5))


def test_a_draining_worker_gets_no_new_envs(broker: BrokerCore) -> None:
    w1, w2 = register(broker, W1), register(broker, W2)
    token = hello(broker)
    first = alloc(broker, token, 4)
    assert counts(first) == {w1: 2, w2: 2}
    assert broker.on_worker(W1, control(Op.DRAIN), 1.0) == []
    row = worker_status(broker, w1)
    assert (row["state"], row["used"], row["free"]) == ("DRAINING", 2, 0)
    assert broker.status()["env_slots"] == {"used": 4, "free": 6}  # w2's only
    second = alloc(broker, token, 4, request_id=2, now=1.1)
    assert counts(second) == {w2: 4}
    # w2 has 2 slots left; w1's 6 free ones are not offered
    refused = alloc(broker, token, 3, request_id=3, now=1.2)
    assert_error(refused, "NoWorkerAvailable", 3, "2 free slot(s)")


def test_a_second_drain_changes_nothing(broker: BrokerCore) -> None:
    w1 = register(broker, W1)
    broker.on_worker(W1, control(Op.DRAIN), 1.0)
    assert broker.on_worker(W1, control(Op.DRAIN), 2.0) == []
    assert worker_status(broker, w1)["state"] == "DRAINING"
    assert worker_status(broker, w1)["last_seen_ago"] == 0.0  # a sign of life all the same


def test_with_only_draining_workers_make_says_so(broker: BrokerCore) -> None:
    register(broker, W1)
    broker.on_worker(W1, control(Op.DRAIN), 1.0)
    token = hello(broker)
    answer = alloc(broker, token, 1, now=1.0)
    assert_error(answer, "NoWorkerAvailable", 1, "no worker is live", "1 draining worker(s)")


def test_a_draining_worker_still_serves_its_envs(broker: BrokerCore) -> None:
    w1, w2 = register(broker, W1), register(broker, W2)
    token = hello(broker)
    envs = alloc(broker, token, 4)
    mine = on(envs, w1)
    broker.on_worker(W1, control(Op.DRAIN), 1.0)
    [forwarded] = broker.on_client(CLIENT, step(w1, mine, 5, token, envs.group), 1.1)
    assert isinstance(forwarded, ToWorker)
    assert forwarded.identity == W1
    [answered] = broker.on_worker(W1, reply(CLIENT, 5, mine), 1.2)
    assert to_client(answered).op is Op.REPLY
    # it is heartbeaten and judged like any live worker
    beats = [o for o in broker.on_tick(2.0) if isinstance(o, ToWorker) and o.identity == W1]
    assert [to_worker(o, W1).op for o in beats] == [Op.HEARTBEAT]
    # closing its envs frees them; the worker may then leave with nothing lost
    close = request(Op.CLOSE, w1, mine, 6, token, envs.group)
    [forwarded] = broker.on_client(CLIENT, close, 2.1)
    assert isinstance(forwarded, ToWorker)
    assert worker_status(broker, w1)["used"] == 0
    broker.on_worker(W1, reply(CLIENT, 6, mine), 2.2)
    outputs = broker.on_worker(W1, control(Op.BYE), 2.3)
    assert outputs == [WorkerDied(w1, "worker-1", "left", W1)]
    assert worker_status(broker, w2)["state"] == "READY"


def test_when_a_draining_worker_leaves_its_envs_are_lost_and_re_placed(
    broker: BrokerCore,
) -> None:
    w1, w2 = register(broker, W1), register(broker, W2)
    token = hello(broker)
    envs = alloc(broker, token, 4)
    lost, group = on(envs, w1), envs.group
    broker.on_worker(W1, control(Op.DRAIN), 1.0)
    broker.on_worker(W2, control(Op.DRAIN), 1.0)
    w3 = register(broker, W3, now=1.5)
    broker.on_client(CLIENT, step(w1, lost, 7, token, group), 2.0)
    # the drain deadline passed with a request in flight: it is answered WorkerLost at BYE
    outputs = broker.on_worker(W1, control(Op.BYE), 3.0)
    [in_flight] = [o for o in outputs if isinstance(o, ToClient)]
    assert_error(decode(in_flight.frames), "WorkerLost", 7, "left")
    assert worker_status(broker, w1)["state"] == "DEAD"
    [output] = broker.on_client(CLIENT, step(w1, lost, 8, token, group), 3.1)
    assert_error(to_client(output), "SessionLost", 8, "reset()")
    # re-placed on the live worker that is not draining (w2 drains, w3 is ready)
    moved = alloc(broker, token, len(lost), env_ids=lost, request_id=9, group=group, now=3.2)
    assert placed(moved) == dict.fromkeys(lost, w3)
    assert worker_status(broker, w2)["used"] == 2


def test_drain_from_an_unregistered_peer_is_told_to_register(broker: BrokerCore) -> None:
    [output] = broker.on_worker(W1, control(Op.DRAIN), 0.0)
    assert to_worker(output, W1).op is Op.DISCONNECT
    assert broker.status()["workers"] == []
