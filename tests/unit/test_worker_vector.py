"""The worker's array fast path: vector-hosted envs, array actions, autoreset. No sockets."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from openenv_zmq.protocol import Message, Op, decode, encode
from openenv_zmq.worker import WorkerCore
from openenv_zmq.worker.core import Pending
from tests.unit.worker_envs import COUNTER


def answered(answer: list[Any] | Pending) -> Message:
    """An answer given at once (these envs never run off the worker's thread), decoded."""
    assert not isinstance(answer, Pending)
    return decode(answer)


def call(core: WorkerCore, op: Op, ids: list[int], **fields: Any) -> Message:
    request = Message(op, request_id=1, worker=0, env_ids=np.array(ids, np.int64), **fields)
    return answered(core.handle(encode(request)))


def create(core: WorkerCore, ids: list[int], **meta: Any) -> Message:
    return call(core, Op.CREATE, ids, meta={"env": COUNTER, **meta})


def step(core: WorkerCore, ids: list[int], actions: list[int]) -> Message:
    return call(core, Op.STEP, ids, parts={"actions": np.array(actions, np.int64)})


def errors(reply: Message) -> dict[int, str]:
    return {row[0]: row[1] for row in reply.parts["errors"]}


@pytest.fixture
def core() -> WorkerCore:
    return WorkerCore(["echo", COUNTER], capacity=16)


def test_create_reports_array_spaces(core: WorkerCore) -> None:
    reply = create(core, [10, 11, 12], kwargs={"limit": 5})
    assert reply.parts["errors"] == []
    # the whole spaces: the layout of their arrays, and the bounds or values a client checks
    assert reply.meta["spaces"] == {
        "action": {"dtype": "<i8", "shape": [], "n": 3, "start": 0},
        "observation": {"dtype": "<f4", "shape": [2], "low": -1.0, "high": 1000.0},
    }
    assert core.slots_used == 3


def test_reset_and_step_answer_with_arrays_in_request_order(core: WorkerCore) -> None:
    create(core, [10, 11, 12], kwargs={"limit": 100})
    reset = call(core, Op.RESET, [12, 10, 11], parts={"seeds": [7, None, 9]})
    assert reset.parts["obs"].tolist() == [[0, 7], [0, -1], [0, 9]]
    reply = step(core, [11, 12], [2, 1])
    assert reply.parts["obs"].dtype == np.float32
    assert reply.parts["obs"].tolist() == [[2, 9], [1, 7]]
    assert reply.parts["rew"].tolist() == [2.0, 1.0]
    assert reply.parts["errors"] == []
    states = call(core, Op.STATE, [10, 11]).parts["states"]
    assert [s["step_count"] for s in states] == [0, 2]


def test_bad_rows_fail_alone(core: WorkerCore) -> None:
    create(core, [10, 11, 12, 13])
    call(core, Op.RESET, [10, 11, 12])
    reply = step(core, [10, 11, 12, 13, 99], [1, 5, 1, 1, 1])
    assert errors(reply) == {
        11: "ActionValidationError",
        13: "NeedsReset",
        99: "EnvNotOnWorker",
    }
    assert reply.parts["obs"][[0, 2]].tolist() == [[1, -1], [1, -1]]
    assert reply.parts["obs"][1].tolist() == [0, 0]
    floats = call(core, Op.STEP, [10], parts={"actions": np.array([1.5])})
    assert "dtype float64" in floats.parts["errors"][0][2]


def test_an_env_that_raises_fails_its_host_rows_only(core: WorkerCore) -> None:
    create(core, [1, 2], kwargs={"fail_on": 2})
    create(core, [3])
    call(core, Op.RESET, [1, 2, 3])
    reply = step(core, [1, 2, 3], [2, 0, 2])
    assert errors(reply) == {1: "RuntimeError", 2: "RuntimeError"}
    assert "asked to fail" in reply.parts["errors"][0][3]
    assert reply.parts["obs"][2].tolist() == [2, -1]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # (obs count, reward, terminated) over four steps of +2 with limit 3
        ("disabled", [(2, 2, False), (4, 2, True), (6, 2, True), (8, 2, True)]),
        ("next_step", [(2, 2, False), (4, 2, True), (0, 0, False), (2, 2, False)]),
        ("same_step", [(2, 2, False), (0, 2, True), (2, 2, False), (0, 2, True)]),
    ],
)
def test_autoreset_modes_follow_gymnasium(
    core: WorkerCore, mode: str, expected: list[tuple[int, int, bool]]
) -> None:
    create(core, [5], autoreset=mode)
    call(core, Op.RESET, [5])
    seen, finals = [], []
    for _ in range(4):
        reply = step(core, [5], [2])
        seen.append(
            (
                int(reply.parts["obs"][0, 0]),
                int(reply.parts["rew"][0]),
                bool(reply.parts["term"][0]),
            )
        )
        if "final_obs" in reply.parts:
            finals.append(int(reply.parts["final_obs"][0, 0]))
    assert seen == expected
    # final_obs travels only with a step that ended an episode
    assert finals == ([4, 4] if mode == "same_step" else [])


def test_close_frees_slots_and_closes_the_vector_env_last(core: WorkerCore) -> None:
    create(core, [1, 2])
    assert core.slots_used == 2
    call(core, Op.CLOSE, [1])
    assert core.slots_used == 1
    assert errors(call(core, Op.RESET, [1])) == {1: "EnvNotOnWorker"}
    call(core, Op.CLOSE, [2])
    assert core.slots_used == 0
    assert create(core, [1, 2]).parts["errors"] == []
    core.drop_all()
    assert core.slots_used == 0


def test_capacity_counts_vector_slots(core: WorkerCore) -> None:
    create(core, list(range(12)))
    reply = create(core, list(range(100, 105)))
    assert set(errors(reply)) == set(range(100, 105))
    assert "worker is full" in reply.parts["errors"][0][2]


def test_env_ids_with_gaps_are_located_by_search(core: WorkerCore) -> None:
    create(core, [1, 2])
    create(core, [7])
    call(core, Op.RESET, [7, 2, 1], parts={"seeds": [7, 2, 1]})
    reply = step(core, [7, 4, 1], [1, 1, 2])
    assert errors(reply) == {4: "EnvNotOnWorker"}
    assert reply.parts["obs"].tolist() == [[1, 7], [0, 0], [2, 1]]
