"""BrokerServer in a thread, with real DEALER sockets playing a worker and a client."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zmq

from broker.core import BrokerConfig
from broker.loop import BrokerServer
from openenv_zmq import sockets
from openenv_zmq.protocol import Message, Op, decode, encode

pytestmark = pytest.mark.integration

CONTROL = b""
HEARTBEAT = 0.2
WAIT = 5.0


class Provider:
    """A WorkerProvider that starts nothing and records what the broker asks of it."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.died: list[bytes] = []
        self.exited: list[bytes] = []
        self.stopped = threading.Event()
        self.extra_backend: str | None = None

    def start(self, connect: str) -> None:
        self.started.append(connect)

    def poll(self) -> list[bytes]:
        exited, self.exited = self.exited, []
        return exited

    def worker_died(self, identity: bytes) -> None:
        self.died.append(identity)

    def stop(self) -> None:
        self.stopped.set()


class Running:
    """A bound broker routing in a background thread."""

    def __init__(self, server: BrokerServer) -> None:
        self.server = server
        self.errors: list[BaseException] = []
        server.bind()
        self.thread = threading.Thread(target=self._run, name="broker", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:
            self.errors.append(exc)

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the broker did not stop"
        assert not self.errors


def dealer(
    context: zmq.Context[zmq.Socket[bytes]], address: str, identity: bytes = b""
) -> zmq.Socket[bytes]:
    socket = sockets.configure(context.socket(zmq.DEALER))
    if identity:
        socket.setsockopt(zmq.IDENTITY, identity)
    socket.connect(address)
    return socket


def recv(socket: zmq.Socket[bytes]) -> list[bytes]:
    if not socket.poll(int(WAIT * 1000)):
        raise AssertionError(f"no message within {WAIT} s")
    return socket.recv_multipart()


def recv_skipping_heartbeats(worker: zmq.Socket[bytes]) -> tuple[bytes, Message]:
    """The next message to a worker that is not a heartbeat, as (route, message)."""
    while True:
        route, *frames = recv(worker)
        message = decode(frames)
        if not (route == CONTROL and message.op is Op.HEARTBEAT):
            return route, message


def join(worker: zmq.Socket[bytes], name: str = "fake-1") -> int:
    ready = Message(Op.READY, meta={"envs": ["echo"], "capacity": 4, "name": name, "pid": 1})
    worker.send_multipart([CONTROL, *encode(ready)])
    route, welcome = recv_skipping_heartbeats(worker)
    assert route == CONTROL
    assert welcome.op is Op.WELCOME
    assert welcome.meta["heartbeat"] == HEARTBEAT
    worker_id: int = welcome.meta["worker"]
    return worker_id


def hello(client: zmq.Socket[bytes]) -> bytes:
    """A client session: every request but HELLO, STATUS and PING acts for one."""
    session: bytes = ask(client, Message(Op.HELLO, 100)).meta["session"]
    return session


def ask(client: zmq.Socket[bytes], message: Message) -> Message:
    client.send_multipart(encode(message))
    answer = decode(recv(client))
    assert answer.request_id == message.request_id
    return answer


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def provider() -> Provider:
    return Provider()


@pytest.fixture
def broker(provider: Provider) -> Iterator[Running]:
    server = BrokerServer(
        "tcp://127.0.0.1:*",
        "tcp://127.0.0.1:0",
        BrokerConfig(heartbeat_interval=HEARTBEAT),
        provider,
    )
    running = Running(server)
    yield running
    if running.thread.is_alive():
        running.stop()


def test_step_round_trip_and_clean_shutdown(
    context: zmq.Context[zmq.Socket[bytes]], broker: Running, provider: Provider
) -> None:
    server = broker.server
    assert server.frontend_address.startswith("tcp://127.0.0.1:")
    assert not server.frontend_address.endswith((":*", ":0"))
    assert not server.backend_address.endswith((":*", ":0"))
    worker = dealer(context, server.backend_address)
    client = dealer(context, server.frontend_address)
    worker_id = join(worker)
    assert provider.started == [server.backend_address]

    session = hello(client)
    made = ask(client, Message(Op.ALLOC, 1, meta={"env": "echo", "num_envs": 3}, session=session))
    assert made.op is Op.REPLY
    assert made.env_ids is not None
    assert made.parts["workers"].tolist() == [worker_id] * 3

    actions = [{"message": f"hello {i}"} for i in range(3)]
    request = Message(
        Op.STEP,
        2,
        worker=worker_id,
        env_ids=made.env_ids,
        parts={"actions": actions},
        session=session,
        group=made.group,
    )
    client.send_multipart(encode(request))
    route, forwarded = recv_skipping_heartbeats(worker)
    assert route != CONTROL
    assert forwarded.op is Op.STEP
    assert forwarded.parts["actions"] == actions
    assert forwarded.env_ids is not None
    assert forwarded.env_ids.tolist() == made.env_ids.tolist()

    rewards = np.arange(3, dtype=np.float32)
    reply = Message(Op.REPLY, 2, env_ids=forwarded.env_ids, parts={"rew": rewards})
    worker.send_multipart([route, *encode(reply)])
    answer = decode(recv(client))
    assert (answer.op, answer.request_id) == (Op.REPLY, 2)
    np.testing.assert_array_equal(answer.parts["rew"], rewards)

    status = ask(client, Message(Op.STATUS, 3)).meta["status"]
    assert status["in_flight"] == 0
    assert status["workers"][0]["steps_served"] == 3

    broker.stop()
    assert provider.stopped.is_set()
    assert not client.poll(100)
    worker.close()
    client.close()


def test_in_flight_request_is_answered_when_the_worker_leaves(
    context: zmq.Context[zmq.Socket[bytes]], broker: Running, provider: Provider
) -> None:
    worker = dealer(context, broker.server.backend_address, b"fake-1-socket")
    client = dealer(context, broker.server.frontend_address)
    worker_id = join(worker)
    session = hello(client)
    alloc = Message(Op.ALLOC, 9, meta={"env": "echo", "num_envs": 2}, session=session)
    made = ask(client, alloc)
    ids = made.env_ids
    assert ids is not None
    state = Message(Op.STATE, 1, worker=worker_id, env_ids=ids, session=session, group=made.group)
    client.send_multipart(encode(state))
    assert recv_skipping_heartbeats(worker)[1].op is Op.STATE
    worker.send_multipart([CONTROL, *encode(Message(Op.BYE))])
    lost = decode(recv(client))
    assert (lost.op, lost.meta["type"], lost.request_id) == (Op.ERROR, "WorkerLost", 1)
    assert lost.env_ids is not None
    assert lost.env_ids.tolist() == ids.tolist()
    after = ask(client, replace(state, request_id=2))
    assert after.meta["type"] == "SessionLost"
    assert provider.died == [b"fake-1-socket"]
    worker.close()
    client.close()


def test_exited_and_vanished_workers_fail_their_requests(
    context: zmq.Context[zmq.Socket[bytes]], broker: Running, provider: Provider
) -> None:
    client = dealer(context, broker.server.frontend_address)
    session = hello(client)

    exiting = dealer(context, broker.server.backend_address, b"exiting-socket")
    exiting_id = join(exiting, "exiting")
    made = ask(client, Message(Op.ALLOC, 9, meta={"env": "echo", "num_envs": 1}, session=session))
    state = Message(
        Op.STATE, 1, worker=exiting_id, env_ids=made.env_ids, session=session, group=made.group
    )
    client.send_multipart(encode(state))
    assert recv_skipping_heartbeats(exiting)[1].op is Op.STATE
    provider.exited.append(b"exiting-socket")
    lost = decode(recv(client))
    assert (lost.meta["type"], lost.request_id) == ("WorkerLost", 1)
    exiting.close()

    # A worker whose socket is gone: the send fails or the silence is noticed; either way the
    # request is answered.
    vanishing = dealer(context, broker.server.backend_address)
    vanishing_id = join(vanishing, "vanishing")
    vanishing.close()
    lost = ask(client, replace(state, request_id=2, worker=vanishing_id))
    assert lost.meta["type"] == "WorkerLost"
    client.close()


def test_ipc_socket_files_are_removed(
    tmp_path: Path, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    server = BrokerServer(
        f"ipc://{tmp_path}/front.sock", f"ipc://{tmp_path}/back.sock", BrokerConfig()
    )
    running = Running(server)
    client = dealer(context, server.frontend_address)
    assert ask(client, Message(Op.PING, 7)).op is Op.REPLY
    client.close()
    running.stop()
    assert list(tmp_path.glob("*.sock")) == []


def test_workers_join_at_the_providers_extra_ipc_address_too(
    tmp_path: Path, context: zmq.Context[zmq.Socket[bytes]], provider: Provider
) -> None:
    # The docker provider's containers have no network: they reach the broker only there.
    provider.extra_backend = f"ipc://{tmp_path}/private/workers.sock"
    server = BrokerServer(
        "tcp://127.0.0.1:*",
        "tcp://127.0.0.1:*",
        BrokerConfig(heartbeat_interval=HEARTBEAT),
        provider,
    )
    running = Running(server)
    assert server.backend_address.startswith("tcp://")  # still what tcp workers join at
    assert (tmp_path / "private").stat().st_mode & 0o777 == 0o700
    worker = dealer(context, provider.extra_backend)
    assert join(worker) >= 0
    worker.close()
    running.stop()
    assert not (tmp_path / "private" / "workers.sock").exists()


def test_a_server_runs_once() -> None:
    server = BrokerServer("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", BrokerConfig())
    server.stop()
    server.run()  # returns at once: stop() came first
    with pytest.raises(RuntimeError, match="already run"):
        server.run()
