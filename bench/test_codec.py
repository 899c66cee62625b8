"""Encode and decode of the messages a batch step makes: STEP and REPLY, structured and array."""

from __future__ import annotations

import numpy as np
import pytest
from echo_env import EchoAction, EchoObservation
from pytest_benchmark.fixture import BenchmarkFixture

from openenv_zmq.protocol import Message, Op, decode, encode

STRUCTURED_ROWS = 1024
ARRAY_SHAPE = (8192, 4)


def _flags(n: int) -> dict[str, np.ndarray]:
    return {
        "rew": np.ones(n, np.float32),
        "term": np.zeros(n, np.bool_),
        "trunc": np.zeros(n, np.bool_),
    }


def _messages() -> dict[str, Message]:
    rng = np.random.default_rng(0)
    few = np.arange(STRUCTURED_ROWS, dtype=np.int64)
    many = np.arange(ARRAY_SHAPE[0], dtype=np.int64)
    action = EchoAction(message="hello").model_dump()
    observation = EchoObservation(echoed_message="hello", message_length=5, reward=0.5).model_dump()
    array = rng.standard_normal(ARRAY_SHAPE, dtype=np.float32)
    return {
        "step-structured-1024": Message(
            Op.STEP, 1, worker=1, env_ids=few, parts={"actions": [action] * STRUCTURED_ROWS}
        ),
        "step-array-8192x4": Message(Op.STEP, 1, worker=1, env_ids=many, parts={"actions": array}),
        "reply-structured-1024": Message(
            Op.REPLY,
            1,
            env_ids=few,
            parts={
                "obs": [observation] * STRUCTURED_ROWS,
                **_flags(STRUCTURED_ROWS),
                "errors": [],
            },
        ),
        "reply-array-8192x4": Message(
            Op.REPLY, 1, env_ids=many, parts={"obs": array, **_flags(len(many)), "errors": []}
        ),
    }


MESSAGES = _messages()


@pytest.mark.parametrize("name", MESSAGES)
def test_encode(benchmark: BenchmarkFixture, name: str) -> None:
    message = MESSAGES[name]
    frames = benchmark(encode, message)
    assert len(frames) == 1 + len(message.parts)


@pytest.mark.parametrize("name", MESSAGES)
def test_decode(benchmark: BenchmarkFixture, name: str) -> None:
    message = MESSAGES[name]
    # bytes, as frames arrive from a socket
    frames = [bytes(frame) for frame in encode(message)]
    decoded = benchmark(decode, frames)
    assert decoded.op is message.op
    assert decoded.env_ids is not None and message.env_ids is not None
    np.testing.assert_array_equal(decoded.env_ids, message.env_ids)
    assert decoded.parts.keys() == message.parts.keys()
