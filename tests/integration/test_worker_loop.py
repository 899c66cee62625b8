"""run_worker in a real spawned process against a ROUTER that plays a minimal broker."""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from openenv_zmq import sockets
from openenv_zmq.errors import EnvNotFound
from openenv_zmq.protocol import Message, Op, decode, encode
from openenv_zmq.worker.loop import run_worker

pytestmark = pytest.mark.integration

CONTROL = b""
CLIENT = b"client-route-1"


@dataclass
class Received:
    identity: bytes
    route: bytes
    message: Message
    at: float


class MiniBroker:
    """A backend ROUTER on a random loopback port; every wait is bounded."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.router = sockets.router(context, "tcp://127.0.0.1:*")
        self.address = sockets.endpoint(self.router)

    def recv(self, timeout: float) -> Received:
        if not self.router.poll(int(timeout * 1000)):
            raise AssertionError(f"nothing from the worker within {timeout} s")
        identity, route, *frames = self.router.recv_multipart()
        return Received(identity, route, decode(frames), time.monotonic())

    def expect(
        self, op: Op, route: bytes = CONTROL, timeout: float = 20.0
    ) -> tuple[Received, list[Received]]:
        """The next message other than a heartbeat, which must be ``op`` on ``route``.

        Returns it and the heartbeats that came before it.
        """
        deadline = time.monotonic() + timeout
        heartbeats: list[Received] = []
        while True:
            got = self.recv(max(deadline - time.monotonic(), 0.001))
            if got.route == CONTROL and got.message.op is Op.HEARTBEAT:
                heartbeats.append(got)
                continue
            assert (got.message.op, got.route) == (op, route), got
            return got, heartbeats

    def send(self, identity: bytes, route: bytes, message: Message) -> None:
        self.router.send_multipart([identity, route, *encode(message)])

    def request(self, identity: bytes, message: Message) -> Message:
        self.send(identity, CLIENT, message)
        got, _ = self.expect(Op.REPLY, CLIENT)
        assert got.message.request_id == message.request_id
        return got.message

    def welcome(self, heartbeat: float, worker: int = 0) -> bytes:
        """Wait for READY, answer WELCOME; returns the worker's identity."""
        ready, _ = self.expect(Op.READY)
        self.send(ready.identity, CONTROL, welcome(worker, heartbeat))
        return ready.identity


def welcome(worker: int, heartbeat: float) -> Message:
    return Message(Op.WELCOME, meta={"worker": worker, "heartbeat": heartbeat})


def ids(n: int) -> Any:
    return np.arange(n, dtype=np.int64)


def create(n: int, request_id: int = 1) -> Message:
    return Message(Op.CREATE, request_id, worker=0, env_ids=ids(n), meta={"env": "echo"})


def reset(n: int, request_id: int = 2) -> Message:
    return Message(Op.RESET, request_id, worker=0, env_ids=ids(n))


def step(n: int, request_id: int, message: str = "hi") -> Message:
    actions = [{"message": message}] * n
    return Message(Op.STEP, request_id, worker=0, env_ids=ids(n), parts={"actions": actions})


@pytest.fixture
def broker() -> Iterator[MiniBroker]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    mini = MiniBroker(context)
    try:
        yield mini
    finally:
        mini.router.close(linger=0)
        context.term()


@pytest.fixture
def spawn_worker() -> Iterator[Any]:
    processes: list[BaseProcess] = []
    spawn = multiprocessing.get_context("spawn")

    def start(**kwargs: Any) -> BaseProcess:
        process = spawn.Process(target=run_worker, kwargs=kwargs, name="test-worker")
        process.start()
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(10)
        if process.is_alive():
            process.kill()
            process.join(10)
        assert not process.is_alive()
        process.close()


def test_requests_round_trip_with_their_route(broker: MiniBroker, spawn_worker: Any) -> None:
    process = spawn_worker(
        connect=broker.address, envs=["echo"], capacity=16, name="w1", heartbeat_interval=0.2
    )
    ready, _ = broker.expect(Op.READY)
    assert ready.message.meta == {
        "envs": ["echo"],
        "capacity": 16,
        "name": "w1",
        "pid": process.pid,
        "registration": 0,
        # where it runs: started by hand, on this host
        "provider": "remote",
        "host": socket.gethostname(),
    }
    assert ready.identity.startswith(b"w1-")
    broker.send(ready.identity, CONTROL, welcome(0, 0.2))
    identity = ready.identity

    created = broker.request(identity, create(2))
    assert created.parts["errors"] == []
    first = broker.request(identity, reset(2))
    assert [o["echoed_message"] for o in first.parts["obs"]] == ["Echo environment ready!"] * 2
    stepped = broker.request(identity, step(2, request_id=3, message="Hello"))
    assert [o["echoed_message"] for o in stepped.parts["obs"]] == ["Hello", "Hello"]
    np.testing.assert_allclose(stepped.parts["rew"], [0.5, 0.5], rtol=1e-6)
    state = broker.request(identity, Message(Op.STATE, 4, worker=0, env_ids=ids(2)))
    assert [s["step_count"] for s in state.parts["states"]] == [1, 1]

    # garbage on a client route is answered on that route; the worker stays up
    broker.router.send_multipart([identity, CLIENT, b"\xc1not msgpack"])
    refused, _ = broker.expect(Op.ERROR, CLIENT)
    assert refused.message.meta["type"] == "ProtocolError"
    closed = broker.request(identity, Message(Op.CLOSE, 5, worker=0, env_ids=ids(2)))
    assert closed.parts["errors"] == []
    assert process.is_alive()


def test_heartbeats_keep_flowing_while_a_big_batch_steps(
    broker: MiniBroker, spawn_worker: Any
) -> None:
    n = 20_000
    interval = 0.02
    spawn_worker(
        connect=broker.address,
        envs=["echo"],
        capacity=n,
        heartbeat_interval=interval,
        liveness=1000.0,  # this broker sends no heartbeats of its own
    )
    identity = broker.welcome(interval)
    assert broker.request(identity, create(n)).parts["errors"] == []
    broker.request(identity, reset(n))

    request_ids = (10, 11, 12)
    for request_id in request_ids:
        broker.send(identity, CLIENT, step(n, request_id))
    beats_per_reply: list[int] = []
    for request_id in request_ids:
        reply, heartbeats = broker.expect(Op.REPLY, CLIENT)
        assert reply.message.request_id == request_id
        assert reply.message.parts["errors"] == []
        beats_per_reply.append(len(heartbeats))

    # The worker steps the queued requests back to back, each for several heartbeat intervals:
    # a loop that heartbeats only between requests would send at most one between two replies.
    assert all(beats >= 2 for beats in beats_per_reply[1:]), beats_per_reply


def test_disconnect_drops_envs_and_registers_again(broker: MiniBroker, spawn_worker: Any) -> None:
    spawn_worker(connect=broker.address, envs=["echo"], heartbeat_interval=0.1, liveness=1000.0)
    identity = broker.welcome(0.1)
    broker.request(identity, create(3))
    broker.request(identity, reset(3))

    broker.send(identity, CONTROL, Message(Op.DISCONNECT, meta={"reason": "unknown worker"}))
    again, _ = broker.expect(Op.READY)
    assert again.identity == identity
    assert again.message.meta["registration"] == 1
    assert_lost(broker, identity, step(3, request_id=20))

    broker.send(identity, CONTROL, welcome(1, 0.1))
    assert broker.request(identity, create(3, request_id=21)).parts["errors"] == []


def test_silent_broker_means_drop_all_and_ready_again(
    broker: MiniBroker, spawn_worker: Any
) -> None:
    interval = 0.1
    spawn_worker(connect=broker.address, envs=["echo"], heartbeat_interval=interval, liveness=2.5)
    identity = broker.welcome(interval)
    broker.request(identity, create(1))
    welcomed_at = time.monotonic()
    broker.request(identity, reset(1))
    # the broker says nothing more: after 2.5 intervals the worker gives it up
    again, _ = broker.expect(Op.READY, timeout=10.0)
    assert again.at - welcomed_at >= 2.5 * interval
    assert_lost(broker, identity, step(1, request_id=30))


def assert_lost(broker: MiniBroker, identity: bytes, request: Message) -> None:
    """A worker registering again answers ``request`` WorkerLost for each env, running nothing:
    it was sent to the registration the worker gave up."""
    broker.send(identity, CLIENT, request)
    deadline = time.monotonic() + 20.0
    got = broker.recv(20.0)
    while got.route == CONTROL:  # READY, re-sent every interval, and heartbeats
        got = broker.recv(max(deadline - time.monotonic(), 0.001))
    assert got.message.op is Op.ERROR, got
    assert got.message.meta["type"] == "WorkerLost"
    assert "registering again" in got.message.meta["message"]
    assert got.message.request_id == request.request_id
    assert got.message.env_ids is not None and request.env_ids is not None
    assert got.message.env_ids.tolist() == request.env_ids.tolist()


def test_sigterm_sends_bye_and_exits_zero(broker: MiniBroker, spawn_worker: Any) -> None:
    process = spawn_worker(connect=broker.address, envs=["echo"], heartbeat_interval=0.1)
    identity = broker.welcome(0.1)
    broker.request(identity, create(2))
    process.terminate()
    bye, _ = broker.expect(Op.BYE, timeout=10.0)
    assert bye.identity == identity
    process.join(10)
    assert process.exitcode == 0


def test_sigterm_while_stepping_still_says_bye(broker: MiniBroker, spawn_worker: Any) -> None:
    n = 20_000
    process = spawn_worker(
        connect=broker.address, envs=["echo"], capacity=n, heartbeat_interval=0.1, liveness=1000.0
    )
    identity = broker.welcome(0.1)
    broker.request(identity, create(n))
    broker.request(identity, reset(n))
    sent_at = time.monotonic()
    for request_id in (40, 41, 42):
        broker.send(identity, CLIENT, step(n, request_id))
    # The first answer shows the worker is stepping the queued batches: signal it now.
    first, _ = broker.expect(Op.REPLY, CLIENT)
    assert first.message.request_id == 40
    batch_seconds = first.at - sent_at
    signalled_at = time.monotonic()
    process.terminate()
    answered_after_signal: list[Received] = []
    deadline = time.monotonic() + 10.0
    while True:
        got = broker.recv(max(deadline - time.monotonic(), 0.001))
        if got.message.op is Op.BYE:
            break
        assert got.message.op in (Op.HEARTBEAT, Op.REPLY), got
        if got.message.op is Op.REPLY:
            answered_after_signal.append(got)
    # The premise: SIGTERM came while batch 41 was stepping. Its answer, sent the moment it was
    # done, came well after the signal (about one batch's time after 40's), and before BYE;
    # 42 is answered too when it was read with 41.
    assert [r.message.request_id for r in answered_after_signal] in ([41], [41, 42])
    assert answered_after_signal[0].at - signalled_at > batch_seconds / 4
    process.join(10)
    assert process.exitcode == 0


def test_sigterm_with_a_drain_timeout_serves_on_then_leaves_at_the_deadline(
    broker: MiniBroker, spawn_worker: Any, tmp_path: Path
) -> None:
    health = tmp_path / "worker.health"
    process = spawn_worker(
        connect=broker.address,
        envs=["echo"],
        heartbeat_interval=0.1,
        liveness=1000.0,  # this broker sends no heartbeats of its own
        drain_timeout=2.0,
        health_file=health,
    )
    identity = broker.welcome(0.1)
    broker.request(identity, create(2))
    broker.request(identity, reset(2))
    wait_for(lambda: health.read_text() == "ready\n", "the health file to say ready")
    signalled_at = time.monotonic()
    process.terminate()
    drain, _ = broker.expect(Op.DRAIN, timeout=10.0)
    assert drain.identity == identity
    wait_for(lambda: health.read_text() == "draining\n", "the health file to say draining")
    stepped = broker.request(identity, step(2, request_id=50, message="still here"))
    assert [o["echoed_message"] for o in stepped.parts["obs"]] == ["still here"] * 2
    bye, heartbeats = broker.expect(Op.BYE, timeout=10.0)
    assert bye.at - signalled_at >= 2.0
    assert len(heartbeats) >= 5  # it went on heartbeating while it drained
    process.join(10)
    assert process.exitcode == 0
    assert not health.exists()


def draining(broker: MiniBroker, spawn_worker: Any) -> tuple[Any, bytes]:
    """A worker hosting 2 envs, told to stop, with its drain of 60 s under way."""
    process = spawn_worker(
        connect=broker.address,
        envs=["echo"],
        heartbeat_interval=0.1,
        liveness=1000.0,
        drain_timeout=60.0,
    )
    identity = broker.welcome(0.1)
    broker.request(identity, create(2))
    process.terminate()
    broker.expect(Op.DRAIN, timeout=10.0)
    return process, identity


def test_a_drain_ends_as_soon_as_every_env_is_closed(broker: MiniBroker, spawn_worker: Any) -> None:
    process, identity = draining(broker, spawn_worker)
    closed = broker.request(identity, Message(Op.CLOSE, 60, worker=0, env_ids=ids(2)))
    closed_at = time.monotonic()
    assert closed.parts["errors"] == []
    bye, _ = broker.expect(Op.BYE, timeout=10.0)
    assert bye.at - closed_at < 5.0  # not the 60 s of its timeout
    process.join(10)
    assert process.exitcode == 0


def test_a_second_signal_ends_a_drain_at_once(broker: MiniBroker, spawn_worker: Any) -> None:
    process, _ = draining(broker, spawn_worker)
    process.terminate()
    signalled_at = time.monotonic()
    bye, _ = broker.expect(Op.BYE, timeout=10.0)
    assert bye.at - signalled_at < 5.0
    process.join(10)
    assert process.exitcode == 0


def test_a_drain_is_announced_while_a_batch_steps(broker: MiniBroker, spawn_worker: Any) -> None:
    n = 20_000
    process = spawn_worker(
        connect=broker.address,
        envs=["echo"],
        capacity=n,
        heartbeat_interval=0.1,
        liveness=1000.0,
        drain_timeout=60.0,
    )
    identity = broker.welcome(0.1)
    broker.request(identity, create(n))
    broker.request(identity, reset(n))
    for request_id in (40, 41, 42):
        broker.send(identity, CLIENT, step(n, request_id))
    first, _ = broker.expect(Op.REPLY, CLIENT)
    assert first.message.request_id == 40
    process.terminate()  # while 41 steps
    # The keep-alive thread tells the broker at once, not after the batches queued here: a
    # broker that heard it later could place new envs on a worker about to leave.
    broker.expect(Op.DRAIN, timeout=10.0)
    answered = [broker.expect(Op.REPLY, CLIENT)[0].message.request_id for _ in range(2)]
    assert answered == [41, 42]  # and it serves them all the same
    process.terminate()
    broker.expect(Op.BYE, timeout=10.0)
    process.join(10)
    assert process.exitcode == 0


def test_a_drain_timeout_leaves_at_once_when_not_registered(
    broker: MiniBroker, spawn_worker: Any
) -> None:
    process = spawn_worker(
        connect=broker.address, envs=["echo"], heartbeat_interval=0.1, drain_timeout=60.0
    )
    broker.expect(Op.READY)  # never welcomed: it hosts nothing
    process.terminate()
    process.join(10)
    assert process.exitcode == 0


def wait_for(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_stop_event_ends_a_worker_running_in_a_thread(broker: MiniBroker) -> None:
    stop = threading.Event()
    failures: list[BaseException] = []

    def target() -> None:
        try:
            # READY must not wait an interval for the connection to come up
            run_worker(broker.address, ["echo"], heartbeat_interval=60.0, stop=stop)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    try:
        ready, _ = broker.expect(Op.READY, timeout=10.0)
        identity = ready.identity
        broker.send(identity, CONTROL, welcome(0, 0.1))
        broker.request(identity, create(1))
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert failures == []
    bye, _ = broker.expect(Op.BYE, timeout=5.0)
    assert bye.identity == identity


def test_unknown_env_fails_before_connecting() -> None:
    with pytest.raises(EnvNotFound, match="no env named 'nope'"):
        run_worker("tcp://127.0.0.1:1", ["nope"])


def test_bad_address_is_raised(broker: MiniBroker) -> None:
    with pytest.raises(zmq.ZMQError):
        run_worker("nonsense://here", ["echo"], stop=threading.Event())
