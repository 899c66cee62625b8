"""WorkerCore's dispatch with real encoded messages: decode, pick the table, answer. No sockets.

What each table does with a request is tested beside it: test_worker_slots.py (structured envs)
and test_worker_vector.py (array envs).
"""

from __future__ import annotations

import re
from typing import Any

import msgpack
import numpy as np
import pytest

from openenv_zmq.protocol import Limits, Message, Op, decode, encode
from openenv_zmq.worker import SlotStatus, WorkerCore
from openenv_zmq.worker.core import Pending
from tests.unit.worker_envs import COUNTER, FLAKY, INFLATING, FlakyEnv, inflate

# ---- helpers -----------------------------------------------------------------------------------


def answered(answer: list[Any] | Pending) -> Message:
    """An answer given at once (these envs never run off the worker's thread), decoded."""
    assert not isinstance(answer, Pending)
    return decode(answer)


def call(
    core: WorkerCore,
    op: Op,
    ids: list[int],
    *,
    request_id: int = 7,
    meta: dict[str, Any] | None = None,
    parts: dict[str, Any] | None = None,
) -> Message:
    request = Message(
        op,
        request_id,
        worker=0,
        env_ids=np.asarray(ids, dtype=np.int64),
        meta=meta or {},
        parts=parts or {},
    )
    return answered(core.handle(encode(request)))


def create(core: WorkerCore, env: str, ids: list[int], **kwargs: Any) -> Message:
    meta: dict[str, Any] = {"env": env}
    if kwargs:
        meta["kwargs"] = kwargs
    reply = call(core, Op.CREATE, ids, meta=meta)
    assert reply.op is Op.REPLY
    return reply


def errors_by_id(reply: Message) -> dict[int, list[Any]]:
    return {row[0]: row for row in reply.parts["errors"]}


@pytest.fixture
def core() -> WorkerCore:
    FlakyEnv.closed.clear()
    return WorkerCore(["echo", FLAKY], capacity=8)


# ---- construction ------------------------------------------------------------------------------


def test_unknown_env_fails_at_construction() -> None:
    with pytest.raises(Exception, match="no env named 'nope'"):
        WorkerCore(["nope"], capacity=1)


@pytest.mark.parametrize(("envs", "capacity"), [([], 1), (["echo"], 0)])
def test_empty_envs_or_capacity_refused(envs: list[str], capacity: int) -> None:
    with pytest.raises(ValueError, match="at least"):
        WorkerCore(envs, capacity)


# ---- CREATE --------------------------------------------------------------------------------------


def test_create_replies_and_starts_needing_reset(core: WorkerCore) -> None:
    reply = create(core, "echo", [3, 4])
    assert reply.request_id == 7
    assert reply.env_ids is not None
    assert reply.env_ids.tolist() == [3, 4]
    assert reply.meta == {}
    assert reply.parts["errors"] == []
    assert core.slots_used == 2
    assert core.status(3) is SlotStatus.NEEDS_RESET
    assert core.status(99) is None


def test_create_unhosted_env_is_a_whole_error_naming_hosted_envs(core: WorkerCore) -> None:
    reply = call(core, Op.CREATE, [0], meta={"env": "coding"})
    assert reply.op is Op.ERROR
    assert reply.request_id == 7
    assert reply.meta["type"] == "EnvNotFound"
    assert "'coding'" in reply.meta["message"]
    assert "echo" in reply.meta["message"]
    assert core.slots_used == 0


def test_create_passes_kwargs_and_reports_constructor_errors(core: WorkerCore) -> None:
    ok = create(core, FLAKY, [0], tag=5)
    assert ok.parts["errors"] == []
    bad = create(core, FLAKY, [1, 2], explode=True)
    rows = errors_by_id(bad)
    assert set(rows) == {1, 2}
    _, type_name, message, tb = rows[1]
    assert type_name == "OSError"
    assert message == "cannot construct: exploded on purpose"
    assert "Traceback" in tb
    assert "__init__" in tb
    assert core.slots_used == 1


def test_create_is_all_or_nothing_on_existing_ids_and_capacity() -> None:
    core = WorkerCore(["echo"], capacity=2)
    assert create(core, "echo", [0]).parts["errors"] == []
    rows = errors_by_id(create(core, "echo", [0, 1]))
    assert set(rows) == {0, 1}
    assert rows[1][1] == "EnvExecutionError"
    assert "[0] already exist" in rows[1][2]
    rows = errors_by_id(create(core, "echo", [1, 2]))
    assert rows[2][1:3] == ["EnvExecutionError", "worker is full (capacity 2, 1 used)"]
    assert core.slots_used == 1
    assert core.capacity == 2
    assert create(core, "echo", [1]).parts["errors"] == []
    call(core, Op.CLOSE, [1])
    assert create(core, "echo", [2]).parts["errors"] == []


# ---- RESET / STEP / STATE / CLOSE: one table per request -----------------------------------------


def test_echo_reset_and_step_semantics(core: WorkerCore) -> None:
    create(core, "echo", [0, 1])
    reset = call(core, Op.RESET, [0, 1], request_id=8)
    assert reset.op is Op.REPLY
    assert reset.request_id == 8
    assert (
        reset.parts["obs"]
        == [
            {
                "done": False,
                "reward": 0.0,
                "metadata": {},
                "echoed_message": "Echo environment ready!",
                "message_length": 0,
            }
        ]
        * 2
    )
    assert core.status(0) is SlotStatus.RUNNING
    step = call(
        core, Op.STEP, [0, 1], parts={"actions": [{"message": "Hello"}, {"message": "hi there"}]}
    )
    assert step.op is Op.REPLY
    assert [o["echoed_message"] for o in step.parts["obs"]] == ["Hello", "hi there"]
    assert [o["message_length"] for o in step.parts["obs"]] == [5, 8]
    assert step.parts["rew"].dtype == np.float32
    np.testing.assert_allclose(step.parts["rew"], [0.5, 0.8], rtol=1e-6)
    assert step.parts["term"].dtype == np.bool_
    assert step.parts["term"].tolist() == [False, False]
    assert step.parts["trunc"].tolist() == [False, False]
    assert step.parts["errors"] == []
    call(core, Op.STEP, [0], parts={"actions": [{"message": ""}]})
    state = call(core, Op.STATE, [0, 1])
    assert [s["step_count"] for s in state.parts["states"]] == [2, 1]


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ({"seeds": [1]}, "1 seeds for 2 env id"),
        ({"kwargs": [{}, {}, {}]}, "3 kwargs for 2 env id"),
        ({"seeds": [1, "2"]}, "int or None"),
        ({"kwargs": [{}, 3]}, "map with string keys"),
        ({"seeds": 5}, "must be a list"),
    ],
)
def test_reset_with_wrong_parts_is_a_protocol_error(
    core: WorkerCore, parts: dict[str, Any], expected: str
) -> None:
    create(core, "echo", [0, 1])
    reply = call(core, Op.RESET, [0, 1], parts=parts)
    assert reply.op is Op.ERROR
    assert reply.meta["type"] == "ProtocolError"
    assert expected in reply.meta["message"]
    assert reply.request_id == 7
    assert core.status(0) is SlotStatus.NEEDS_RESET


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ({}, "needs an 'actions' part"),
        ({"actions": [{"message": "a"}]}, "1 actions for 2 env id"),
        ({"actions": {"message": "a"}}, "must be a list"),
    ],
)
def test_step_with_wrong_actions_is_a_protocol_error(
    core: WorkerCore, parts: dict[str, Any], expected: str
) -> None:
    create(core, "echo", [0, 1])
    call(core, Op.RESET, [0, 1])
    reply = call(core, Op.STEP, [0, 1], parts=parts, request_id=99)
    assert reply.op is Op.ERROR
    assert reply.request_id == 99
    assert reply.meta["type"] == "ProtocolError"
    assert expected in reply.meta["message"]


@pytest.mark.parametrize("hosted", ["echo", COUNTER])
@pytest.mark.parametrize(
    ("op", "parts"),
    [
        (Op.RESET, {}),
        (Op.STEP, {"actions": [{"message": "a"}, {"message": "b"}]}),
        (Op.STATE, {}),
        (Op.CLOSE, {}),
    ],
)
def test_every_op_answers_ids_not_here_in_their_rows(
    op: Op, parts: dict[str, Any], hosted: str
) -> None:
    core = WorkerCore(["echo", COUNTER], capacity=4)
    assert create(core, hosted, [0]).parts["errors"] == []
    assert call(core, Op.RESET, [0]).parts["errors"] == []
    if hosted == COUNTER:
        parts = {"actions": np.array([1, 1])} if op is Op.STEP else parts
    reply = call(core, op, [0, 3], parts=parts)
    assert reply.op is Op.REPLY
    rows = errors_by_id(reply)
    assert set(rows) == {3}
    assert rows[3][1:] == ["EnvNotOnWorker", "this worker hosts no env with id 3", ""]


def test_structured_and_array_envs_do_not_mix_in_one_request() -> None:
    core = WorkerCore(["echo", COUNTER], capacity=4)
    assert create(core, COUNTER, [1]).parts["errors"] == []
    assert create(core, "echo", [2]).parts["errors"] == []
    reply = call(core, Op.RESET, [1, 2])
    assert reply.op is Op.ERROR
    assert "mixes array and structured envs" in reply.meta["message"]


def test_drop_all_closes_and_forgets_every_env(core: WorkerCore) -> None:
    create(core, FLAKY, [0], tag=1, fail_close=True)
    create(core, FLAKY, [1], tag=2)
    create(core, "echo", [2])
    core.drop_all()
    assert sorted(FlakyEnv.closed) == [1, 2]
    assert core.slots_used == 0
    reply = call(core, Op.STEP, [2], parts={"actions": [{"message": "a"}]})
    assert errors_by_id(reply)[2][1] == "EnvNotOnWorker"
    assert create(core, "echo", [2]).parts["errors"] == []


def test_refuse_runs_nothing_and_answers_worker_lost_for_each_env(core: WorkerCore) -> None:
    # What a worker that is registering again answers: the request was for envs it dropped.
    create_request = Message(
        Op.CREATE, 9, worker=0, env_ids=np.arange(3, dtype=np.int64), meta={"env": "echo"}
    )
    refused = decode(core.refuse(encode(create_request), "gone"))
    assert (refused.op, refused.request_id, refused.meta) == (
        Op.ERROR,
        9,
        {"type": "WorkerLost", "message": "gone"},
    )
    assert refused.env_ids is not None and refused.env_ids.tolist() == [0, 1, 2]
    assert core.slots_used == 0
    garbled = decode(core.refuse([msgpack.packb({"v": 2, "op": 99, "id": 42})], "gone"))
    assert (garbled.request_id, garbled.meta["type"], garbled.env_ids) == (42, "WorkerLost", None)


# ---- requests that are not requests -----------------------------------------------------------


def test_garbage_frames_get_an_error_reply(core: WorkerCore) -> None:
    for frames in ([], [b"\xc1garbage"], [msgpack.packb([1, 2])], [b"", b"payload"]):
        reply = answered(core.handle(frames))
        assert reply.op is Op.ERROR
        assert reply.request_id == 0
        assert reply.meta["type"] == "ProtocolError"


def test_readable_request_id_is_kept_on_protocol_errors(core: WorkerCore) -> None:
    reply = answered(core.handle([msgpack.packb({"v": 2, "op": 99, "id": 42})]))
    assert reply.op is Op.ERROR
    assert reply.request_id == 42
    assert "unknown op 99" in reply.meta["message"]
    future = answered(core.handle([msgpack.packb({"v": 3, "op": int(Op.STEP), "id": 5})]))
    assert future.request_id == 5
    assert "version" in future.meta["message"]


def test_oversized_message_is_refused() -> None:
    core = WorkerCore(["echo"], capacity=4, limits=Limits(max_message_bytes=256))
    frames = encode(
        Message(
            Op.STEP,
            3,
            worker=0,
            env_ids=np.arange(4, dtype=np.int64),
            parts={"actions": [{"message": "x" * 100}] * 4},
        )
    )
    reply = answered(core.handle(frames))
    assert reply.op is Op.ERROR
    assert reply.meta["type"] == "MessageTooLarge"
    assert reply.request_id == 3


@pytest.mark.parametrize(
    "message",
    [
        Message(Op.ALLOC, 4, meta={"env": "echo", "num_envs": 1}),
        Message(Op.PING, 4),
        Message(Op.REPLY, 4),
        Message(Op.HEARTBEAT, 4),
    ],
)
def test_ops_a_worker_does_not_handle_are_refused(core: WorkerCore, message: Message) -> None:
    reply = answered(core.handle(encode(message)))
    assert reply.op is Op.ERROR
    assert reply.request_id == 4
    assert reply.meta["type"] == "ProtocolError"
    assert message.op.name in reply.meta["message"]


# ---- replies over the limit --------------------------------------------------------------------

ROW_OVER_LIMIT = re.compile(
    r"its observation of (\d+) bytes does not fit a reply under the limit of (\d+)"
)


def step_inflating(limit: int, sizes: dict[int, int]) -> tuple[WorkerCore, Message]:
    """Eight inflating echo envs under ``limit``, reset, then stepped: env ``i`` echoes
    ``sizes[i]`` bytes, the others "hi". The requests are all small."""
    core = WorkerCore([INFLATING], capacity=8, limits=Limits(max_message_bytes=limit))
    ids = list(range(8))
    create(core, INFLATING, ids)
    call(core, Op.RESET, ids)
    actions = [inflate(sizes[i]) if i in sizes else {"message": "hi"} for i in ids]
    return core, call(core, Op.STEP, ids, parts={"actions": actions})


def named_size(row: list[Any], limit: int) -> int:
    """The row size an over-the-limit error row names (checking its type and limit)."""
    _, type_name, message, _ = row
    assert type_name == "EnvExecutionError"
    match = ROW_OVER_LIMIT.fullmatch(message)
    assert match is not None, message
    assert int(match[2]) == limit
    return int(match[1])


def test_rows_over_the_limit_become_errors_of_their_envs_alone() -> None:
    limit = 32 * 1024
    core, reply = step_inflating(limit, {2: 40_000, 5: 50_000})
    assert reply.op is Op.REPLY and reply.request_id == 7
    rows = errors_by_id(reply)
    assert set(rows) == {2, 5}
    assert 40_000 < named_size(rows[2], limit) < 40_200  # the echoed message and its fields
    assert 50_000 < named_size(rows[5], limit) < 50_200
    echoed = [obs and obs["echoed_message"] for obs in reply.parts["obs"]]
    assert echoed == ["hi", "hi", None, "hi", "hi", None, "hi", "hi"]
    assert reply.parts["rew"][[2, 5]].tolist() == [0.0, 0.0]
    # The two envs did step and answer on: only that step's observation was lost.
    assert core.status(2) is SlotStatus.RUNNING
    again = call(core, Op.STEP, [2, 5], parts={"actions": [{"message": "hi"}] * 2})
    assert again.parts["errors"] == []
    assert [obs["echoed_message"] for obs in again.parts["obs"]] == ["hi", "hi"]
    states = call(core, Op.STATE, [2, 5]).parts["states"]
    assert [state["step_count"] for state in states] == [2, 2]


def test_the_largest_row_fails_first_and_alone_when_that_is_enough() -> None:
    limit = 64 * 1024  # under both rows together, over either one
    _, reply = step_inflating(limit, {2: 30_000, 5: 40_000})
    assert reply.op is Op.REPLY
    rows = errors_by_id(reply)
    assert set(rows) == {5}
    assert 40_000 < named_size(rows[5], limit) < 40_200
    assert reply.parts["obs"][2]["message_length"] == 30_000


def test_a_reply_over_the_limit_even_with_every_row_failed_is_refused_whole() -> None:
    # So small that eight error rows are over it too (as were the reset's eight observations:
    # that reply was refused whole as well, though the envs did reset).
    core, reply = step_inflating(512, dict.fromkeys(range(8), 10_000))
    assert reply.op is Op.ERROR and reply.request_id == 7
    assert reply.meta["type"] == "MessageTooLarge"
    message = reply.meta["message"]
    assert message.startswith("the reply to 8 env(s) is over the limit even with every row failed")
    assert re.search(r"\d+ bytes is over the limit of 512$", message)
    assert core.status(0) is SlotStatus.RUNNING


def test_an_array_reply_over_the_limit_is_refused_whole() -> None:
    core = WorkerCore([COUNTER], capacity=64, limits=Limits(max_message_bytes=1200))
    ids = list(range(64))
    create(core, COUNTER, ids)
    reply = call(core, Op.RESET, ids)  # 64 rows of 8 bytes, and their rewards and flags
    assert reply.op is Op.ERROR and reply.request_id == 7
    assert reply.meta["type"] == "MessageTooLarge"
    assert re.fullmatch(r"message of \d+ bytes is over the limit of 1200", reply.meta["message"])
