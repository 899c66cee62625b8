"""SlotTable: structured envs reset, stepped, read and closed a request at a time; no sockets.

Replies are encoded and decoded, so each assertion sees what a client would receive.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from echo_env.models import EchoAction
from pydantic import ValidationError

from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.protocol import Message, Op, decode
from openenv_zmq.registry import resolve_env
from openenv_zmq.worker.kinds import EnvKind, Runtime
from openenv_zmq.worker.rows import Reply
from openenv_zmq.worker.slots import SlotTable
from openenv_zmq.worker.status import SlotStatus
from tests.unit.worker_envs import COUNTDOWN, FLAKY, SEED_ONLY, FlakyEnv


def make(
    table: SlotTable, env: str, env_ids: list[int], autoreset: str = "disabled", **kwargs: Any
) -> None:
    runtime = Runtime(EnvKind.of(resolve_env(env)), kwargs, AutoresetMode(autoreset))
    errors = table.create(runtime, env_ids)
    assert errors == []


def answer(op: Op, env_ids: list[int], reply: Reply) -> Message:
    request = Message(op, 7, worker=0, env_ids=np.asarray(env_ids, dtype=np.int64))
    return decode(reply.encode(request))


def reset(
    table: SlotTable,
    env_ids: list[int],
    seeds: list[Any] | None = None,
    kwargs: list[Any] | None = None,
) -> Message:
    selection = table.select(np.asarray(env_ids, dtype=np.int64))
    return answer(Op.RESET, env_ids, selection.reset(seeds, kwargs))


def step(table: SlotTable, env_ids: list[int], actions: list[Any]) -> Message:
    selection = table.select(np.asarray(env_ids, dtype=np.int64))
    return answer(Op.STEP, env_ids, selection.step(actions))


def state(table: SlotTable, env_ids: list[int]) -> Message:
    return answer(Op.STATE, env_ids, table.select(np.asarray(env_ids, dtype=np.int64)).state())


def close(table: SlotTable, env_ids: list[int]) -> Message:
    return answer(Op.CLOSE, env_ids, table.select(np.asarray(env_ids, dtype=np.int64)).close())


def errors_by_id(reply: Message) -> dict[int, list[Any]]:
    return {row[0]: row for row in reply.parts["errors"]}


def assert_row_zeroed(reply: Message, index: int) -> None:
    assert reply.parts["obs"][index] is None
    assert reply.parts["rew"][index] == 0.0
    assert not reply.parts["term"][index]
    assert not reply.parts["trunc"][index]


@pytest.fixture
def table() -> SlotTable:
    FlakyEnv.closed.clear()
    return SlotTable()


# ---- RESET ---------------------------------------------------------------------------------------


def test_reset_kwargs_reach_envs_that_take_them(table: SlotTable) -> None:
    make(table, "echo", [0])
    reset(table, [0], kwargs=[{"episode_id": "ep-1", "anything": 1}])
    assert state(table, [0]).parts["states"][0]["episode_id"] == "ep-1"


def test_reset_drops_kwargs_the_signature_does_not_take(table: SlotTable) -> None:
    make(table, SEED_ONLY, [0, 1])
    make(table, COUNTDOWN, [2])
    reply = reset(
        table,
        [0, 1, 2],
        seeds=[11, None, 5],
        kwargs=[{"episode_id": "x", "difficulty": 3}, {}, {"horizon": 0, "junk": True}],
    )
    assert reply.parts["errors"] == []
    assert reply.parts["obs"][0]["seed"] == 11
    assert reply.parts["obs"][1]["seed"] is None
    # horizon reached CountdownEnv.reset, junk was dropped
    assert reply.parts["obs"][2]["left"] == 0
    assert reply.parts["term"].tolist() == [False, False, True]
    assert table.status(2) is SlotStatus.DONE


def test_seeds_part_wins_over_a_seed_kwarg(table: SlotTable) -> None:
    make(table, SEED_ONLY, [0, 1])
    reply = reset(table, [0, 1], seeds=[1, 2], kwargs=[{"seed": 9}, {"seed": 9}])
    assert [o["seed"] for o in reply.parts["obs"]] == [1, 2]
    reply = reset(table, [0], kwargs=[{"seed": 9}])
    assert reply.parts["obs"][0]["seed"] == 9


def test_reset_errors_are_per_env_and_need_a_new_reset(table: SlotTable) -> None:
    make(table, FLAKY, [0, 1])
    reply = reset(table, [0, 1, 42], seeds=[13, 0, 0])
    rows = errors_by_id(reply)
    assert set(rows) == {0, 42}
    assert rows[0][1:3] == ["KeyError", "'unlucky seed'"]
    assert "unlucky seed" in rows[0][3]
    assert rows[42][1] == "EnvNotOnWorker"
    assert_row_zeroed(reply, 0)
    assert_row_zeroed(reply, 2)
    assert reply.parts["obs"][1]["value"] == 0
    assert table.status(0) is SlotStatus.NEEDS_RESET
    stepped = step(table, [0, 1], [{"value": 1}, {"value": 2}])
    assert errors_by_id(stepped)[0][1] == "NeedsReset"
    assert stepped.parts["obs"][1]["value"] == 2


# ---- STEP ----------------------------------------------------------------------------------------


def test_step_errors_stay_in_their_row(table: SlotTable) -> None:
    make(table, FLAKY, [0, 1, 2])
    reset(table, [0, 1, 2])
    reply = step(table, [0, 1, 2], [{"value": 3}, {"value": -4}, {"value": 5}])
    (row,) = reply.parts["errors"]
    env_id, type_name, message, tb = row
    assert (env_id, type_name, message) == (1, "RuntimeError", "negative value -4")
    assert "Traceback (most recent call last)" in tb
    assert "in step" in tb
    assert "RuntimeError: negative value -4" in tb
    assert_row_zeroed(reply, 1)
    assert [reply.parts["obs"][i]["value"] for i in (0, 2)] == [3, 5]
    assert reply.parts["rew"].tolist() == [3.0, 0.0, 5.0]
    # the failed step left its env stepping, as OpenEnv keeps the session
    assert table.status(1) is SlotStatus.RUNNING
    assert step(table, [1], [{"value": 1}]).parts["errors"] == []


def test_action_validation_error_carries_pydantic_message(table: SlotTable) -> None:
    make(table, "echo", [0, 1, 2])
    reset(table, [0, 1, 2])
    bad: dict[str, Any] = {"msg": "no such field"}
    with pytest.raises(ValidationError) as expected:
        EchoAction.model_validate(bad)
    reply = step(table, [0, 1, 2], [bad, {"message": "ok"}, "not a map"])
    rows = errors_by_id(reply)
    assert set(rows) == {0, 2}
    pydantic_errors = json.loads(expected.value.json())
    assert rows[0][1:] == [
        "ActionValidationError",
        str(expected.value),
        "",
        {"errors": pydantic_errors},
    ]
    assert rows[2][1] == "ActionValidationError"
    assert rows[2][4]["errors"][0]["type"] == "model_type"
    assert "valid dictionary" in rows[2][2]
    assert reply.parts["obs"][1]["echoed_message"] == "ok"
    assert_row_zeroed(reply, 0)


def test_step_before_reset_and_unknown_ids(table: SlotTable) -> None:
    make(table, "echo", [0])
    reply = step(table, [0, 5], [{"message": "a"}] * 2)
    rows = errors_by_id(reply)
    assert rows[0][1:] == ["NeedsReset", "call reset() before step()", ""]
    assert rows[5][1] == "EnvNotOnWorker"
    assert "5" in rows[5][2]
    assert_row_zeroed(reply, 0)
    assert_row_zeroed(reply, 1)


def test_done_slots_can_still_be_stepped_and_reset(table: SlotTable) -> None:
    make(table, COUNTDOWN, [0], horizon=2)
    reset(table, [0])
    first = step(table, [0], [{}])
    assert first.parts["term"].tolist() == [False]
    assert table.status(0) is SlotStatus.RUNNING
    second = step(table, [0], [{}])
    assert second.parts["term"].tolist() == [True]
    assert second.parts["obs"][0]["done"] is True
    assert table.status(0) is SlotStatus.DONE
    # autoreset is disabled (OpenEnv behaviour): stepping a finished episode is the env's call
    third = step(table, [0], [{}])
    assert third.parts["errors"] == []
    assert third.parts["obs"][0]["left"] == -1
    reset(table, [0])
    assert table.status(0) is SlotStatus.RUNNING


def test_unencodable_observation_fails_only_its_env(table: SlotTable) -> None:
    make(table, FLAKY, [0, 1])
    reset(table, [0, 1])
    reply = step(table, [0, 1], [{"value": 666}, {"value": 2}])
    (row,) = reply.parts["errors"]
    assert row[:2] == [0, "EnvExecutionError"]
    assert "cannot be encoded" in row[2]
    assert_row_zeroed(reply, 0)
    assert reply.parts["obs"][1]["value"] == 2


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # (left, reward, done) over three steps of a horizon-2 countdown
        ("disabled", [(1, 1.0, False), (0, 1.0, True), (-1, 1.0, True)]),
        ("next_step", [(1, 1.0, False), (0, 1.0, True), (2, 0.0, False)]),
        ("same_step", [(1, 1.0, False), (2, 1.0, True), (1, 1.0, False)]),
    ],
)
def test_structured_envs_autoreset_like_gymnasium(
    table: SlotTable, mode: str, expected: list[tuple[int, float, bool]]
) -> None:
    make(table, COUNTDOWN, [0], autoreset=mode)
    reset(table, [0])
    seen, finals = [], []
    for _ in range(3):
        reply = step(table, [0], [{}])
        obs = reply.parts["obs"][0]
        seen.append((obs["left"], float(reply.parts["rew"][0]), bool(reply.parts["term"][0])))
        finals.append(reply.parts.get("final_obs", [None])[0])
    assert seen == expected
    if mode == "same_step":
        assert finals[1] is not None
        assert finals[1]["left"] == 0
        assert finals[1]["done"] is True
    else:
        assert finals == [None, None, None]


# ---- STATE / CLOSE / drop_all --------------------------------------------------------------------


def test_state_of_known_and_unknown_ids(table: SlotTable) -> None:
    make(table, "echo", [0])
    reset(table, [0], kwargs=[{"episode_id": "e"}])
    reply = state(table, [0, 9])
    assert reply.parts["states"] == [{"episode_id": "e", "step_count": 0}, None]
    assert errors_by_id(reply)[9][1] == "EnvNotOnWorker"


def test_close_frees_slots_even_when_close_raises(table: SlotTable) -> None:
    make(table, FLAKY, [0], tag=1)
    make(table, FLAKY, [1], tag=2, fail_close=True)
    reply = close(table, [0, 1, 2])
    rows = errors_by_id(reply)
    assert set(rows) == {1, 2}
    assert rows[1][1:3] == ["RuntimeError", "close failed"]
    assert rows[2][1] == "EnvNotOnWorker"
    assert FlakyEnv.closed == [1, 2]
    assert len(table) == 0
    assert errors_by_id(state(table, [0]))[0][1] == "EnvNotOnWorker"


def test_an_id_named_twice_is_closed_once(table: SlotTable) -> None:
    make(table, FLAKY, [0], tag=1)
    reply = close(table, [0, 0])
    assert [row[1] for row in reply.parts["errors"]] == ["EnvNotOnWorker"]
    assert FlakyEnv.closed == [1]


def test_drop_all_closes_and_forgets_every_env(table: SlotTable) -> None:
    make(table, FLAKY, [0], tag=1, fail_close=True)
    make(table, FLAKY, [1], tag=2)
    assert table.drop_all() == (2, 1)
    assert sorted(FlakyEnv.closed) == [1, 2]
    assert len(table) == 0
    assert table.status(0) is None
