"""WorkerCore driven with real encoded messages; no sockets."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import msgpack
import numpy as np
import pytest
from echo_env.models import EchoAction
from pydantic import ValidationError

from openenv_zmq.env import Environment
from openenv_zmq.protocol import Limits, Message, Op, decode, encode
from openenv_zmq.types import Action, Observation, State
from openenv_zmq.worker.core import SlotStatus, WorkerCore

# ---- small envs, reachable as f"{__name__}:Class" --------------------------------------------


class ValueAction(Action):
    value: int


class ValueObservation(Observation):
    value: int = 0
    payload: Any = None


class FlakyEnv(Environment[ValueAction, ValueObservation, State]):
    """Raises in step on negative values, in reset on seed 13, in close when asked to."""

    closed: ClassVar[list[int]] = []

    def __init__(self, explode: bool = False, fail_close: bool = False, tag: int = 0) -> None:
        super().__init__()
        if explode:
            raise OSError("cannot construct: exploded on purpose")
        self.fail_close = fail_close
        self.tag = tag
        self._state = State()

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> ValueObservation:
        if seed == 13:
            raise KeyError("unlucky seed")
        self._state = State(episode_id=episode_id, step_count=0)
        return ValueObservation(value=0, reward=0.0)

    def step(
        self, action: ValueAction, timeout_s: float | None = None, **kwargs: Any
    ) -> ValueObservation:
        if action.value < 0:
            raise RuntimeError(f"negative value {action.value}")
        self._state.step_count += 1
        payload = object() if action.value == 666 else None  # msgpack cannot carry it
        return ValueObservation(value=action.value, reward=action.value, payload=payload)

    @property
    def state(self) -> State:
        return self._state

    def close(self) -> None:
        FlakyEnv.closed.append(self.tag)
        if self.fail_close:
            raise RuntimeError("close failed")


class SeedObservation(Observation):
    seed: int | None = None


class SeedOnlyEnv(Environment[Action, SeedObservation, State]):
    """Its reset takes only ``seed``: every other reset argument must be dropped."""

    def __init__(self) -> None:
        super().__init__()
        self._state = State()

    def reset(self, seed: int | None = None) -> SeedObservation:  # type: ignore[override]
        return SeedObservation(seed=seed)

    def step(
        self, action: Action, timeout_s: float | None = None, **kwargs: Any
    ) -> SeedObservation:
        return SeedObservation()

    @property
    def state(self) -> State:
        return self._state


class CountdownObservation(Observation):
    left: int


class CountdownEnv(Environment[Action, CountdownObservation, State]):
    """Done after ``horizon`` steps; ``horizon`` can be changed at reset (no ``**kwargs``)."""

    def __init__(self, horizon: int = 2) -> None:
        super().__init__()
        self.horizon = horizon
        self.left = horizon
        self._state = State()

    def reset(  # type: ignore[override]
        self, seed: int | None = None, episode_id: str | None = None, horizon: int | None = None
    ) -> CountdownObservation:
        if horizon is not None:
            self.horizon = horizon
        self.left = self.horizon
        self._state = State(episode_id=episode_id)
        return CountdownObservation(left=self.left, done=self.left <= 0)

    def step(
        self, action: Action, timeout_s: float | None = None, **kwargs: Any
    ) -> CountdownObservation:
        self.left -= 1
        self._state.step_count += 1
        return CountdownObservation(left=self.left, done=self.left <= 0, reward=1.0)

    @property
    def state(self) -> State:
        return self._state


FLAKY = f"{__name__}:FlakyEnv"
SEED_ONLY = f"{__name__}:SeedOnlyEnv"
COUNTDOWN = f"{__name__}:CountdownEnv"

# ---- helpers -----------------------------------------------------------------------------------


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
    return decode(core.handle(encode(request)))


def create(core: WorkerCore, env: str, ids: list[int], **kwargs: Any) -> Message:
    meta: dict[str, Any] = {"env": env}
    if kwargs:
        meta["kwargs"] = kwargs
    reply = call(core, Op.CREATE, ids, meta=meta)
    assert reply.op is Op.REPLY
    return reply


def errors_by_id(reply: Message) -> dict[int, list[Any]]:
    return {row[0]: row for row in reply.parts["errors"]}


def assert_row_zeroed(reply: Message, index: int) -> None:
    assert reply.parts["obs"][index] is None
    assert reply.parts["rew"][index] == 0.0
    assert not reply.parts["term"][index]
    assert not reply.parts["trunc"][index]


@pytest.fixture
def core() -> WorkerCore:
    FlakyEnv.closed.clear()
    return WorkerCore(["echo", FLAKY, SEED_ONLY, COUNTDOWN], capacity=8)


# ---- construction ------------------------------------------------------------------------------


def test_unknown_env_fails_at_construction() -> None:
    with pytest.raises(Exception, match="no env named 'nope'"):
        WorkerCore(["nope"], capacity=1)


@pytest.mark.parametrize(("envs", "capacity"), [([], 1), (["echo"], 0)])
def test_empty_envs_or_capacity_refused(envs: list[str], capacity: int) -> None:
    with pytest.raises(ValueError, match="at least"):
        WorkerCore(envs, capacity)


# ---- CREATE --------------------------------------------------------------------------------------


def test_create_replies_types_and_starts_needing_reset(core: WorkerCore) -> None:
    reply = create(core, "echo", [3, 4])
    assert reply.request_id == 7
    assert reply.env_ids is not None
    assert reply.env_ids.tolist() == [3, 4]
    assert reply.meta["types"] == {
        "action": "echo_env.models:EchoAction",
        "observation": "echo_env.models:EchoObservation",
        "state": "openenv_zmq.types:State",
    }
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


# ---- RESET ---------------------------------------------------------------------------------------


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


def test_reset_kwargs_reach_envs_that_take_them(core: WorkerCore) -> None:
    create(core, "echo", [0])
    call(core, Op.RESET, [0], parts={"kwargs": [{"episode_id": "ep-1", "anything": 1}]})
    state = call(core, Op.STATE, [0])
    assert state.parts["states"][0]["episode_id"] == "ep-1"


def test_reset_drops_kwargs_the_signature_does_not_take(core: WorkerCore) -> None:
    create(core, SEED_ONLY, [0, 1])
    create(core, COUNTDOWN, [2])
    reply = call(
        core,
        Op.RESET,
        [0, 1, 2],
        parts={
            "seeds": [11, None, 5],
            "kwargs": [{"episode_id": "x", "difficulty": 3}, {}, {"horizon": 0, "junk": True}],
        },
    )
    assert reply.parts["errors"] == []
    assert reply.parts["obs"][0]["seed"] == 11
    assert reply.parts["obs"][1]["seed"] is None
    # horizon reached CountdownEnv.reset, junk was dropped
    assert reply.parts["obs"][2]["left"] == 0
    assert reply.parts["term"].tolist() == [False, False, True]
    assert core.status(2) is SlotStatus.DONE


def test_seeds_part_wins_over_a_seed_kwarg(core: WorkerCore) -> None:
    create(core, SEED_ONLY, [0, 1])
    reply = call(
        core, Op.RESET, [0, 1], parts={"seeds": [1, 2], "kwargs": [{"seed": 9}, {"seed": 9}]}
    )
    assert [o["seed"] for o in reply.parts["obs"]] == [1, 2]
    reply = call(core, Op.RESET, [0], parts={"kwargs": [{"seed": 9}]})
    assert reply.parts["obs"][0]["seed"] == 9


def test_reset_errors_are_per_env_and_need_a_new_reset(core: WorkerCore) -> None:
    create(core, FLAKY, [0, 1])
    reply = call(core, Op.RESET, [0, 1, 42], parts={"seeds": [13, 0, 0]})
    rows = errors_by_id(reply)
    assert set(rows) == {0, 42}
    assert rows[0][1:3] == ["KeyError", "'unlucky seed'"]
    assert "unlucky seed" in rows[0][3]
    assert rows[42][1] == "EnvNotOnWorker"
    assert_row_zeroed(reply, 0)
    assert_row_zeroed(reply, 2)
    assert reply.parts["obs"][1]["value"] == 0
    assert core.status(0) is SlotStatus.NEEDS_RESET
    step = call(core, Op.STEP, [0, 1], parts={"actions": [{"value": 1}, {"value": 2}]})
    assert errors_by_id(step)[0][1] == "NeedsReset"
    assert step.parts["obs"][1]["value"] == 2


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


# ---- STEP ----------------------------------------------------------------------------------------


def test_step_errors_stay_in_their_row(core: WorkerCore) -> None:
    create(core, FLAKY, [0, 1, 2])
    call(core, Op.RESET, [0, 1, 2])
    reply = call(
        core, Op.STEP, [0, 1, 2], parts={"actions": [{"value": 3}, {"value": -4}, {"value": 5}]}
    )
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
    assert core.status(1) is SlotStatus.RUNNING
    again = call(core, Op.STEP, [1], parts={"actions": [{"value": 1}]})
    assert again.parts["errors"] == []


def test_action_validation_error_carries_pydantic_message(core: WorkerCore) -> None:
    create(core, "echo", [0, 1, 2])
    call(core, Op.RESET, [0, 1, 2])
    bad: dict[str, Any] = {"msg": "no such field"}
    with pytest.raises(ValidationError) as expected:
        EchoAction.model_validate(bad)
    reply = call(core, Op.STEP, [0, 1, 2], parts={"actions": [bad, {"message": "ok"}, "not a map"]})
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


def test_step_before_reset_and_unknown_ids(core: WorkerCore) -> None:
    create(core, "echo", [0])
    reply = call(core, Op.STEP, [0, 5], parts={"actions": [{"message": "a"}] * 2})
    rows = errors_by_id(reply)
    assert rows[0][1:] == ["NeedsReset", "call reset() before step()", ""]
    assert rows[5][1] == "EnvNotOnWorker"
    assert "5" in rows[5][2]
    assert_row_zeroed(reply, 0)
    assert_row_zeroed(reply, 1)


def test_done_slots_can_still_be_stepped_and_reset(core: WorkerCore) -> None:
    create(core, COUNTDOWN, [0], horizon=2)
    call(core, Op.RESET, [0])
    first = call(core, Op.STEP, [0], parts={"actions": [{}]})
    assert first.parts["term"].tolist() == [False]
    assert core.status(0) is SlotStatus.RUNNING
    second = call(core, Op.STEP, [0], parts={"actions": [{}]})
    assert second.parts["term"].tolist() == [True]
    assert second.parts["obs"][0]["done"] is True
    assert core.status(0) is SlotStatus.DONE
    # autoreset is disabled (OpenEnv behaviour): stepping a finished episode is the env's call
    third = call(core, Op.STEP, [0], parts={"actions": [{}]})
    assert third.parts["errors"] == []
    assert third.parts["obs"][0]["left"] == -1
    call(core, Op.RESET, [0])
    assert core.status(0) is SlotStatus.RUNNING


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


def test_unencodable_observation_fails_only_its_env(core: WorkerCore) -> None:
    create(core, FLAKY, [0, 1])
    call(core, Op.RESET, [0, 1])
    reply = call(core, Op.STEP, [0, 1], parts={"actions": [{"value": 666}, {"value": 2}]})
    (row,) = reply.parts["errors"]
    assert row[:2] == [0, "EnvExecutionError"]
    assert "cannot be encoded" in row[2]
    assert_row_zeroed(reply, 0)
    assert reply.parts["obs"][1]["value"] == 2


# ---- STATE / CLOSE / drop_all -----------------------------------------------------------------


def test_state_of_known_and_unknown_ids(core: WorkerCore) -> None:
    create(core, "echo", [0])
    call(core, Op.RESET, [0], parts={"kwargs": [{"episode_id": "e"}]})
    reply = call(core, Op.STATE, [0, 9])
    assert reply.op is Op.REPLY
    assert reply.parts["states"] == [{"episode_id": "e", "step_count": 0}, None]
    assert errors_by_id(reply)[9][1] == "EnvNotOnWorker"


def test_close_frees_slots_even_when_close_raises(core: WorkerCore) -> None:
    create(core, FLAKY, [0], tag=1)
    create(core, FLAKY, [1], tag=2, fail_close=True)
    reply = call(core, Op.CLOSE, [0, 1, 2])
    assert reply.op is Op.REPLY
    rows = errors_by_id(reply)
    assert set(rows) == {1, 2}
    assert rows[1][1:3] == ["RuntimeError", "close failed"]
    assert rows[2][1] == "EnvNotOnWorker"
    assert FlakyEnv.closed == [1, 2]
    assert core.slots_used == 0
    assert errors_by_id(call(core, Op.STATE, [0]))[0][1] == "EnvNotOnWorker"


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


# ---- requests that are not requests -----------------------------------------------------------


def test_garbage_frames_get_an_error_reply(core: WorkerCore) -> None:
    for frames in ([], [b"\xc1garbage"], [msgpack.packb([1, 2])], [b"", b"payload"]):
        reply = decode(core.handle(frames))
        assert reply.op is Op.ERROR
        assert reply.request_id == 0
        assert reply.meta["type"] == "ProtocolError"


def test_readable_request_id_is_kept_on_protocol_errors(core: WorkerCore) -> None:
    reply = decode(core.handle([msgpack.packb({"v": 1, "op": 99, "id": 42})]))
    assert reply.op is Op.ERROR
    assert reply.request_id == 42
    assert "unknown op 99" in reply.meta["message"]
    future = decode(core.handle([msgpack.packb({"v": 2, "op": int(Op.STEP), "id": 5})]))
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
    reply = decode(core.handle(frames))
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
    reply = decode(core.handle(encode(message)))
    assert reply.op is Op.ERROR
    assert reply.request_id == 4
    assert reply.meta["type"] == "ProtocolError"
    assert message.op.name in reply.meta["message"]


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
    core: WorkerCore, mode: str, expected: list[tuple[int, float, bool]]
) -> None:
    reply = call(core, Op.CREATE, [0], meta={"env": COUNTDOWN, "autoreset": mode})
    assert reply.parts["errors"] == []
    call(core, Op.RESET, [0])
    seen, finals = [], []
    for _ in range(3):
        step = call(core, Op.STEP, [0], parts={"actions": [{}]})
        obs = step.parts["obs"][0]
        seen.append((obs["left"], float(step.parts["rew"][0]), bool(step.parts["term"][0])))
        finals.append(step.parts.get("final_obs", [None])[0])
    assert seen == expected
    if mode == "same_step":
        assert finals[1] is not None
        assert finals[1]["left"] == 0
        assert finals[1]["done"] is True
    else:
        assert finals == [None, None, None]
