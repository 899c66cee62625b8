"""BrokerLink: registration, heartbeats and liveness driven with a fake clock; no sockets."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from openenv_zmq.protocol import Message, Op
from openenv_zmq.worker.link import READY_RETRY_SECONDS, BrokerLink, LinkOutput, WorkerLifecycle

BARE_READY = Message(Op.READY, meta={"envs": ["echo"], "capacity": 4, "name": "w", "pid": 1})
READY = replace(BARE_READY, meta={**BARE_READY.meta, "registration": 0})
"""What the link sends for its first registration."""


def ready(registration: int) -> Message:
    return replace(BARE_READY, meta={**BARE_READY.meta, "registration": registration})


def welcome(heartbeat: float = 0.5, worker: int = 3, registration: int | None = None) -> Message:
    meta: dict[str, Any] = {"worker": worker, "heartbeat": heartbeat}
    if registration is not None:
        meta["registration"] = registration
    return Message(Op.WELCOME, meta=meta)


def state_of(link: BrokerLink) -> WorkerLifecycle:
    # a call, so the type checker does not keep a narrowed state across link methods
    return link.state


def sent_ops(output: Any) -> list[Op]:
    return [m.op for m in output.send]


def test_link_resends_ready_every_interval_until_welcome() -> None:
    link = BrokerLink(BARE_READY, interval=1.0, liveness=2.5, now=100.0)
    assert state_of(link) is WorkerLifecycle.STARTING
    assert not link.serving
    assert link.deadline == 100.0
    first = link.on_tick(100.0)
    assert first.send == (READY,)
    assert not first.drop_all
    assert link.on_tick(100.5).send == ()
    assert link.deadline == 101.0
    # no liveness verdict while unregistered: READY keeps going out
    assert sent_ops(link.on_tick(110.0)) == [Op.READY]
    assert link.on_control(welcome(heartbeat=0.5, worker=3), 110.2).send == ()
    assert state_of(link) is WorkerLifecycle.READY
    assert link.serving
    assert link.worker_id == 3
    assert link.interval == 0.5
    assert sent_ops(link.on_tick(111.0)) == [Op.HEARTBEAT]
    link.on_control(Message(Op.HEARTBEAT), 111.1)
    assert link.on_tick(111.2).send == ()
    assert sent_ops(link.on_tick(111.5)) == [Op.HEARTBEAT]


def test_link_retries_unsent_ready_soon() -> None:
    link = BrokerLink(READY, interval=1.0, liveness=2.5, now=0.0)
    (ready,) = link.on_tick(0.0).send
    link.not_sent(ready, 0.0)  # not connected yet
    assert link.deadline == READY_RETRY_SECONDS
    assert link.on_tick(READY_RETRY_SECONDS).send == (READY,)
    assert link.deadline == READY_RETRY_SECONDS + 1.0
    link.on_control(welcome(heartbeat=1.0), 0.1)
    (heartbeat,) = link.on_tick(1.1).send
    link.not_sent(heartbeat, 1.1)  # heartbeats keep their pace
    assert link.deadline == 2.1


def test_link_silent_broker_means_drop_all_and_register_again() -> None:
    link = BrokerLink(READY, interval=1.0, liveness=2.5, now=0.0)
    link.on_tick(0.0)
    link.on_control(welcome(heartbeat=1.0), 0.1)
    assert link.deadline == 1.0
    link.on_tick(1.0)
    link.on_control(Message(Op.HEARTBEAT), 1.5)
    link.heard(2.5)  # any request counts as a sign of life
    assert link.deadline == 2.0  # next heartbeat
    link.on_tick(2.0)
    link.on_tick(3.0)
    link.on_tick(4.0)
    assert state_of(link) is WorkerLifecycle.READY
    output = link.on_tick(5.1)  # 2.6 s after the broker was last heard
    assert output.drop_all
    assert output.send == (ready(1),)  # a new registration: its envs are gone
    assert state_of(link) is WorkerLifecycle.STARTING
    assert not link.serving
    assert link.worker_id is None
    assert link.on_tick(5.5).send == ()
    assert link.on_tick(6.1).send == (ready(1),)  # re-sent: the same registration


def test_link_disconnect_drops_all_and_resends_ready() -> None:
    link = BrokerLink(READY, interval=1.0, liveness=2.5, now=0.0)
    link.on_control(welcome(), 0.0)
    output = link.on_control(Message(Op.DISCONNECT, meta={"reason": "unknown worker"}), 1.0)
    assert output.drop_all
    assert output.send == (ready(1),)
    assert state_of(link) is WorkerLifecycle.STARTING
    link.on_control(welcome(worker=4), 1.1)
    assert state_of(link) is WorkerLifecycle.READY
    assert link.worker_id == 4


def test_link_while_registering_a_disconnect_changes_nothing() -> None:
    # The broker's answers to heartbeats sent before the network went down come after the link
    # has given the registration up: READY is on its way, nothing is dropped again.
    link = BrokerLink(READY, interval=1.0, liveness=2.5, now=0.0)
    link.on_control(welcome(), 0.0)
    link.on_tick(3.0)  # silent broker: registration 1
    disconnect = Message(Op.DISCONNECT, meta={"reason": "not registered: send READY"})
    for _ in range(3):
        output = link.on_control(disconnect, 3.1)
        assert output.send == ()
        assert not output.drop_all
    assert link.registration == 1
    assert link.on_tick(4.0).send == (ready(1),)


def test_link_ignores_the_welcome_of_an_earlier_registration() -> None:
    link = BrokerLink(READY, interval=1.0, liveness=2.5, now=0.0)
    link.on_control(welcome(worker=3, registration=0), 0.0)
    link.on_tick(3.0)  # silent broker: registration 1
    # a re-sent READY of registration 0 was welcomed again, late: not this registration
    assert link.on_control(welcome(worker=3, registration=0), 3.1).send == ()
    assert state_of(link) is WorkerLifecycle.STARTING
    link.on_control(welcome(worker=5, registration=1), 3.2)
    assert state_of(link) is WorkerLifecycle.READY
    assert link.worker_id == 5
    # welcomed again (a READY re-sent before the first WELCOME came): still the same one
    assert link.on_control(welcome(worker=5, registration=1), 3.3).send == ()
    assert state_of(link) is WorkerLifecycle.READY
    assert link.registration == 1


def test_link_errors_and_odd_control_messages_change_nothing() -> None:
    link = BrokerLink(READY, interval=1.0, liveness=2.5, now=0.0)
    link.on_control(welcome(), 0.0)
    error = Message(Op.ERROR, meta={"type": "ProtocolError", "message": "bad"})
    for message in (error, Message(Op.BYE), welcome(heartbeat=0)):
        output = link.on_control(message, 0.5)
        assert output.send == ()
        assert not output.drop_all
        assert state_of(link) is WorkerLifecycle.READY
    assert link.interval == 0.5  # a non-positive interval from the broker is ignored


def test_link_leave_sends_bye_once_and_then_nothing() -> None:
    link = BrokerLink(READY, interval=1.0, liveness=2.5, now=0.0)
    link.on_control(welcome(), 0.0)
    assert link.leave().op is Op.BYE
    assert state_of(link) is WorkerLifecycle.DEAD
    assert not link.registered
    assert link.on_tick(100.0).send == ()
    assert link.on_control(Message(Op.DISCONNECT, meta={"reason": "x"}), 100.0).send == ()
    assert link.keepalive(100.0) is None
    with pytest.raises(RuntimeError, match="DEAD to DEAD"):
        link.leave()


def test_link_unregistered_leaves_at_once_and_cannot_drain() -> None:
    link = BrokerLink(READY, interval=1.0, liveness=2.5, now=0.0)
    with pytest.raises(RuntimeError, match="STARTING to DRAINING"):
        link.drain(0.0, 25.0)
    assert link.leave().op is Op.BYE
    assert state_of(link) is WorkerLifecycle.DEAD


def draining(timeout: float = 10.0, interval: float = 1.0) -> BrokerLink:
    """A link registered at 0.0 and told to drain at 1.0, for ``timeout`` seconds."""
    link = BrokerLink(READY, interval=interval, liveness=2.5, now=0.0)
    link.on_control(welcome(heartbeat=interval), 0.0)
    output = link.drain(1.0, timeout)
    assert sent_ops(output) == [Op.DRAIN]
    assert not output.leave
    assert not output.drop_all
    assert state_of(link) is WorkerLifecycle.DRAINING
    assert link.registered
    assert link.serving  # its envs are served until it leaves
    return link


def test_draining_link_heartbeats_on_and_leaves_at_its_deadline() -> None:
    link = draining(timeout=10.0)
    for now in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0):
        output = link.on_tick(now)
        assert not output.leave, now
        assert sent_ops(output) in ([], [Op.HEARTBEAT]), now
        link.on_control(Message(Op.HEARTBEAT), now)  # the broker is alive
    assert link.keepalive(10.5) is None  # sent at 10.0
    assert link.keepalive(11.0) == Message(Op.HEARTBEAT)  # heartbeats while a batch steps too
    assert link.deadline == 11.0  # the drain deadline
    output = link.on_tick(11.0)
    assert output.leave
    assert not output.drop_all  # the envs answer until BYE; the broker then says SessionLost
    assert state_of(link) is WorkerLifecycle.DRAINING  # until leave(): BYE
    assert link.leave().op is Op.BYE


def test_draining_link_leaves_when_the_broker_forgets_it() -> None:
    link = draining()
    output = link.on_control(Message(Op.DISCONNECT, meta={"reason": "not registered"}), 2.0)
    assert output.leave
    assert output.drop_all
    assert output.send == ()  # no READY: a draining worker does not register again


def test_draining_link_leaves_when_the_broker_is_silent() -> None:
    link = draining(timeout=100.0)
    link.on_control(Message(Op.HEARTBEAT), 2.0)
    assert not link.on_tick(4.0).leave
    output = link.on_tick(4.6)  # 2.6 s of silence
    assert output.leave
    assert output.drop_all
    assert READY not in output.send


def test_draining_link_ignores_welcome_and_errors() -> None:
    link = draining()
    error = Message(Op.ERROR, meta={"type": "ProtocolError", "message": "unknown op 35"})
    for message in (welcome(worker=9), error, Message(Op.HEARTBEAT)):
        output = link.on_control(message, 1.5)
        assert output == LinkOutput()
    assert state_of(link) is WorkerLifecycle.DRAINING
    assert link.worker_id == 3


def test_draining_link_resends_a_drain_that_could_not_be_sent() -> None:
    link = draining()
    link.not_sent(Message(Op.DRAIN), 1.0)
    assert sent_ops(link.on_tick(2.0)) == [Op.DRAIN, Op.HEARTBEAT]
    link.heard(2.5)
    assert sent_ops(link.on_tick(3.0)) == [Op.HEARTBEAT]


def test_link_needs_ready_and_positive_timings() -> None:
    with pytest.raises(ValueError, match="READY"):
        BrokerLink(Message(Op.HEARTBEAT), 1.0, 2.5, 0.0)
    with pytest.raises(ValueError, match="positive"):
        BrokerLink(READY, 0.0, 2.5, 0.0)
