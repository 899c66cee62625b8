"""Reply rows and per-env error rows, and the slot lifecycle both kinds of env share. No sockets."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError, model_serializer

from openenv_zmq.protocol import Limits, Message, Op, decode
from openenv_zmq.spaces import Box
from openenv_zmq.types import Observation
from openenv_zmq.worker import SlotStatus
from openenv_zmq.worker.rows import (
    ArrayRows,
    ModelRows,
    action_validation_row,
    error_rows,
    exception_row,
    exception_rows,
    not_on_worker_row,
)
from openenv_zmq.worker.status import settled, settled_many


def request(env_ids: list[int]) -> Message:
    return Message(Op.STEP, 5, worker=0, env_ids=np.asarray(env_ids, dtype=np.int64))


def test_exception_rows_carry_the_current_traceback() -> None:
    try:
        raise ValueError("bad value")
    except ValueError as exc:
        one = exception_row(4, exc)
        many = exception_rows(np.array([7, 8, 9]), np.array([0, 2]), exc)
    assert one[:3] == [4, "ValueError", "bad value"]
    assert "raise ValueError" in one[3]
    assert [row[:3] for row in many] == [
        [7, "ValueError", "bad value"],
        [9, "ValueError", "bad value"],
    ]
    assert all("Traceback" in row[3] for row in many)


def test_error_rows_name_each_env_by_its_id() -> None:
    rows = error_rows(np.array([10, 11, 12]), np.array([1]), "NeedsReset", "reset first")
    assert rows == [[11, "NeedsReset", "reset first", ""]]
    assert type(rows[0][0]) is int  # msgpack-able, not a numpy scalar
    assert not_on_worker_row(3) == [3, "EnvNotOnWorker", "this worker hosts no env with id 3", ""]


def test_an_action_validation_row_carries_pydantic_errors_as_details() -> None:
    class Move(BaseModel):
        steps: int

    with pytest.raises(ValidationError) as caught:
        Move.model_validate({"steps": "many"})
    row = action_validation_row(2, caught.value)
    assert row[:4] == [2, "ActionValidationError", str(caught.value), ""]
    assert row[4] == {"errors": json.loads(caught.value.json())}


class Unserializable(Observation):
    @model_serializer
    def refuse(self) -> dict[str, Any]:
        raise RuntimeError("cannot dump me")


def test_model_rows_zero_a_row_whose_model_cannot_be_dumped() -> None:
    rows = ModelRows([0, 1], "obs", [])
    rows.put_observation(0, Unserializable(reward=2.0, done=True))
    rows.put_observation(1, Observation(reward=1.0))
    reply = decode(rows.encode(request([0, 1])))
    (error,) = reply.parts["errors"]
    assert error[0] == 0
    assert "cannot dump me" in error[2]  # pydantic wraps the serializer's exception
    assert reply.parts["obs"][0] is None
    assert reply.parts["rew"].tolist() == [0.0, 1.0]
    assert reply.parts["term"].tolist() == [False, False]
    assert reply.parts["obs"][1]["reward"] == 1.0


class Payload(Observation):
    payload: Any = None


def test_model_rows_fail_unpackable_and_oversized_rows_in_one_pass() -> None:
    limit = 4096
    rows = ModelRows([0, 1, 2], "obs", [])
    rows.put_observation(0, Payload(payload=object()))  # msgpack cannot carry it
    rows.put_observation(1, Payload(payload="x" * 3000, reward=1.0))
    rows.put_final(1, Payload(payload="y" * 3000))  # a same-step reset kept the episode's last
    rows.put_observation(2, Payload(payload="small", reward=2.0))
    reply = decode(rows.encode(request([0, 1, 2]), Limits(max_message_bytes=limit)))
    unpackable, oversized = reply.parts["errors"]
    assert unpackable[:2] == [0, "EnvExecutionError"]
    assert "cannot be encoded" in unpackable[2]
    assert oversized[:2] == [1, "EnvExecutionError"]
    assert re.fullmatch(
        rf"its observation and final observation of 6\d\d\d bytes does not fit a reply under "
        rf"the limit of {limit}",
        oversized[2],
    )
    assert reply.parts["obs"][:2] == [None, None]
    assert reply.parts["final_obs"] == [None, None, None]
    assert reply.parts["obs"][2]["payload"] == "small"
    assert reply.parts["rew"].tolist() == [0.0, 0.0, 2.0]


def test_array_rows_start_zeroed_and_fail_rows_by_position() -> None:
    rows = ArrayRows(np.array([4, 5]), Box(0, 1, (3,), np.float32), [])
    rows.fail(np.array([1]), "ActionValidationError", "outside")
    reply = decode(rows.encode(request([4, 5])))
    assert reply.parts["obs"].shape == (2, 3)
    assert not reply.parts["obs"].any()
    assert reply.parts["errors"] == [[5, "ActionValidationError", "outside", ""]]
    assert "final_obs" not in reply.parts


def test_settled_status_is_done_only_when_the_episode_ended() -> None:
    assert settled(True) is SlotStatus.DONE
    assert settled(False) is SlotStatus.RUNNING
    many = settled_many(np.array([True, False]))
    assert many.dtype == np.uint8
    assert many.tolist() == [SlotStatus.DONE, SlotStatus.RUNNING]
    assert [s.value for s in SlotStatus] == [0, 1, 2, 3]  # one uint8 per vector index
