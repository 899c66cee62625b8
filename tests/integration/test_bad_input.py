"""Garbage at the broker's two doors gets an error reply; a good client next to it sees nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq
from echo_env import EchoAction

from openenv_zmq import BatchClient, sockets
from openenv_zmq.protocol import Message, Op, decode, encode
from tests.processes import Broker, Processes, wait_until

MAX_MESSAGE_MB = 1


@pytest.fixture
def broker(procs: Processes) -> Broker:
    return procs.broker(workers=2, extra=("--max-message-mb", str(MAX_MESSAGE_MB)))


@pytest.fixture
def good_client(broker: Broker) -> Iterator[dict[str, int]]:
    """A client stepping 64 envs in a loop for the whole test; yields its counters."""
    counts = {"batches": 0, "errors": 0}
    stop, stepping = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def step_loop() -> None:
        try:
            with BatchClient(broker.frontend, timeout=10) as client:
                envs = client.make("echo", num_envs=64)
                envs.reset()
                for _ in range(10_000):
                    if stop.is_set():
                        break
                    r = envs.step([EchoAction(message="steady")] * 64)
                    counts["batches"] += 1
                    counts["errors"] += len(r.errors)
                    stepping.set()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=step_loop, name="good-client")
    thread.start()
    assert stepping.wait(30), f"the good client never stepped: {failures}"
    yield counts
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    assert not failures, failures
    assert counts["batches"] > 0 and counts["errors"] == 0


def still_stepping(counts: dict[str, int]) -> None:
    """The good client steps on after the garbage (not only before it)."""
    after = counts["batches"]
    wait_until(lambda: counts["batches"] > after, 10, "the good client to step again")


def ask(address: str, frames: list[Any], route: bytes | None = None) -> Message:
    """Send raw frames from a fresh DEALER and decode the one answer."""
    socket: zmq.Socket[bytes] = sockets.configure(zmq.Context.instance().socket(zmq.DEALER))
    try:
        socket.connect(address)
        socket.send_multipart(frames if route is None else [route, *frames])
        assert socket.poll(10_000), "no answer"
        answer = socket.recv_multipart()
        return decode(answer if route is None else answer[1:])
    finally:
        socket.close()


def header(**fields: object) -> bytes:
    return msgpack.packb(fields)


FRONTEND_GARBAGE = {
    "not msgpack": ([b"\xc1\xc1garbage"], "ProtocolError", "not valid msgpack"),
    "not a map": ([msgpack.packb([1, 2])], "ProtocolError", "must be a msgpack map"),
    "wrong version": ([header(v=99, op=3)], "ProtocolError", "unsupported protocol version 99"),
    "unknown op": ([header(v=2, op=77)], "ProtocolError", "unknown op 77"),
    "unknown field": ([header(v=2, op=3, extra=1)], "ProtocolError", "unknown header field"),
    "worker op": ([header(v=2, op=int(Op.READY))], "ProtocolError", "READY"),
    "missing env ids": ([header(v=2, op=int(Op.STEP), w=0)], "ProtocolError", "needs env ids"),
    "oversized": (
        [header(v=2, op=3), b"x" * (MAX_MESSAGE_MB * 2**20 + 1)],
        "MessageTooLarge",
        "over the limit",
    ),
}


@pytest.mark.parametrize("case", sorted(FRONTEND_GARBAGE))
def test_frontend_answers_garbage_with_an_error(
    broker: Broker, good_client: dict[str, int], case: str
) -> None:
    frames, type_name, text = FRONTEND_GARBAGE[case]
    for _ in range(3):
        answer = ask(broker.frontend, frames)
        assert answer.op is Op.ERROR
        assert answer.meta["type"] == type_name
        assert text in answer.meta["message"]
    with BatchClient(broker.frontend) as client:
        assert len(client.status()["workers"]) == 2
    still_stepping(good_client)


def test_backend_answers_garbage_and_strangers(broker: Broker, good_client: dict[str, int]) -> None:
    answer = ask(broker.backend, [b"\xc1not a header"], route=b"")
    assert answer.op is Op.ERROR and answer.meta["type"] == "ProtocolError"
    stranger = ask(broker.backend, encode(Message(Op.HEARTBEAT)), route=b"")
    assert stranger.op is Op.DISCONNECT
    huge = [header(v=2, op=int(Op.HEARTBEAT)), b"x" * (MAX_MESSAGE_MB * 2**20 + 1)]
    answer = ask(broker.backend, huge, route=b"")
    assert answer.op is Op.ERROR and answer.meta["type"] == "MessageTooLarge"
    with BatchClient(broker.frontend) as client:
        assert {w["state"] for w in client.status()["workers"]} == {"READY"}
    still_stepping(good_client)
