"""BrokerCore routing a 1024-env STEP to its worker and the REPLY back, with no sockets."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from echo_env import EchoAction, EchoObservation
from pytest_benchmark.fixture import BenchmarkFixture

from broker.core import BrokerCore, ToClient, ToWorker
from openenv_zmq.protocol import EnvIds, Frame, Message, Op, decode, encode

CLIENT = b"client"
WORKER = b"worker"
CONTROL = b""
NUM_ENVS = 1024
NOW = 1.0


def _core_with_envs() -> tuple[BrokerCore, int, EnvIds, bytes, int]:
    """A core with one registered worker and ``NUM_ENVS`` echo envs placed on it, for a client
    session; returns the core, worker id, env ids, session token and group id."""
    core = BrokerCore()
    ready = Message(
        Op.READY, meta={"envs": ["echo"], "capacity": NUM_ENVS, "name": "worker", "pid": 1}
    )
    welcome = core.on_worker(WORKER, [CONTROL, *encode(ready)], 0.0)[0]
    assert isinstance(welcome, ToWorker)
    worker_id: int = decode(welcome.frames[1:]).meta["worker"]
    [hello] = core.on_client(CLIENT, encode(Message(Op.HELLO, 1)), 0.0)
    assert isinstance(hello, ToClient)
    session: bytes = decode(hello.frames).meta["session"]
    alloc = Message(Op.ALLOC, 2, meta={"env": "echo", "num_envs": NUM_ENVS}, session=session)
    [placed] = core.on_client(CLIENT, encode(alloc), 0.0)
    assert isinstance(placed, ToClient)
    answer = decode(placed.frames)
    assert answer.env_ids is not None and answer.group is not None
    return core, worker_id, answer.env_ids, session, answer.group


def _payloads(kind: str) -> tuple[Any, Any]:
    """Actions and observations for ``NUM_ENVS`` envs: echo models' dicts, or float32 arrays."""
    if kind == "structured":
        action = EchoAction(message="hello").model_dump()
        obs = EchoObservation(echoed_message="hello", message_length=5, reward=0.5).model_dump()
        return [action] * NUM_ENVS, [obs] * NUM_ENVS
    rows = np.zeros((NUM_ENVS, 4), np.float32)
    return rows, rows


def _wire(message: Message) -> list[Frame]:
    return [bytes(frame) for frame in encode(message)]


@pytest.mark.parametrize("kind", ["structured", "array"])
def test_forward_step_and_reply(benchmark: BenchmarkFixture, kind: str) -> None:
    core, worker_id, env_ids, session, group = _core_with_envs()
    actions, observations = _payloads(kind)
    step = _wire(
        Message(
            Op.STEP,
            7,
            worker=worker_id,
            env_ids=env_ids,
            parts={"actions": actions},
            session=session,
            group=group,
        )
    )
    flags = {
        "rew": np.zeros(NUM_ENVS, np.float32),
        "term": np.zeros(NUM_ENVS, np.bool_),
        "trunc": np.zeros(NUM_ENVS, np.bool_),
    }
    parts = {"obs": observations, **flags, "errors": []}
    reply = [CLIENT, *_wire(Message(Op.REPLY, 7, env_ids=env_ids, parts=parts))]

    def round_trip() -> tuple[object, object]:
        [forward] = core.on_client(CLIENT, step, NOW)
        [back] = core.on_worker(WORKER, reply, NOW)
        return forward, back

    forward, back = benchmark(round_trip)
    assert isinstance(forward, ToWorker)
    assert forward.identity == WORKER
    assert forward.frames[0] == CLIENT
    # payload frames pass through as the very same objects: no decode, no copy
    assert all(a is b for a, b in zip(forward.frames[2:], step[1:], strict=True))
    assert isinstance(back, ToClient)
    assert back.client == CLIENT
    assert all(a is b for a, b in zip(back.frames, reply[1:], strict=True))
    assert core.status()["in_flight"] == 0
