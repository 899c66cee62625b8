"""The client's pure parts: splitting by worker, joining answers, and the call flows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from echo_env import EchoAction, EchoObservation

from openenv_zmq.client.batching import (
    FEW_IDS,
    ArrayLayout,
    EnvModels,
    Placement,
    assemble,
    build_models,
    in_order,
    split_by_worker,
)
from openenv_zmq.client.flows import (
    Flow,
    alloc_flow,
    completed_steps,
    dump_actions,
    reset_flow,
    state_flow,
    step_flow,
    step_requests,
)
from openenv_zmq.client.results import BatchResult
from openenv_zmq.client.state import GroupSpec, GroupState, local_models
from openenv_zmq.errors import (
    ActionValidationError,
    AlreadyPendingCall,
    BatchSizeMismatch,
    ClosedError,
    EnvIdsNotInGroup,
    NoPendingCall,
    NoWorkerAvailable,
    ProtocolError,
    SessionLost,
    WorkerLost,
)
from openenv_zmq.protocol import Message, Op, decode, encode, error_message
from openenv_zmq.registry import type_path
from openenv_zmq.types import State
from tests.unit.worker_envs import UndeclaredObservation


def wire(message: Message) -> Message:
    """What the other side would read: the message through encode and decode."""
    return decode(encode(message))


def echo_reply(request: Message, errors: list[list[Any]] | None = None) -> Message:
    """A worker's answer to a RESET/STEP: obs echo the action (or the ready message)."""
    assert request.env_ids is not None
    failed = {row[0] for row in errors or []}
    ids = request.env_ids.tolist()
    messages = (
        [a["message"] for a in request.parts["actions"]]
        if request.op is Op.STEP
        else ["Echo environment ready!"] * len(ids)
    )
    obs = [
        None if i in failed else {"echoed_message": m, "message_length": len(m)}
        for i, m in zip(ids, messages, strict=True)
    ]
    rewards = np.array(
        [0 if i in failed else len(m) * 0.1 for i, m in zip(ids, messages, strict=True)], "f4"
    )
    return Message(
        Op.REPLY,
        request_id=request.request_id,
        env_ids=request.env_ids,
        parts={
            "obs": obs,
            "rew": rewards,
            "term": np.zeros(len(ids), bool),
            "trunc": np.zeros(len(ids), bool),
            "errors": errors or [],
        },
    )


def group(ids: list[int], workers: list[int]) -> GroupState:
    return GroupState(GroupSpec("echo"), ids[0], Placement.of(np.array(ids), np.array(workers)))


def run(flow: Flow[Any], answer: Any) -> Any:
    """Drive a flow, answering each round with ``answer(requests)``."""
    try:
        requests = next(flow)
        while True:
            requests = flow.send([wire(a) for a in answer([wire(r) for r in requests])])
    except StopIteration as stop:
        return stop.value


def test_split_by_worker_keeps_request_order_within_each_worker() -> None:
    ids = np.array([10, 11, 12, 13, 14])
    subs = split_by_worker(ids, np.array([2, 1, 2, 1, 2]))
    assert [(s.worker, s.env_ids.tolist(), s.positions.tolist()) for s in subs] == [
        (1, [11, 13], [1, 3]),
        (2, [10, 12, 14], [0, 2, 4]),
    ]


def test_split_by_worker_of_one_worker_or_no_env_ids() -> None:
    [sub] = split_by_worker(np.array([4, 2, 3]), np.array([7, 7, 7]))
    assert (sub.worker, sub.env_ids.tolist(), sub.positions.tolist()) == (7, [4, 2, 3], [0, 1, 2])
    assert split_by_worker(np.array([], np.int64), np.array([], np.int64)) == []


@pytest.mark.parametrize("asked", [2, FEW_IDS, FEW_IDS + 1, 40], ids=lambda n: f"{n}-ids")
def test_placement_locates_moves_and_refuses_strangers(asked: int) -> None:
    """Up to FEW_IDS ids are located through a dict, more with numpy: the same answers."""
    ids = np.arange(100, 140)
    placement = Placement.of(ids[::-1], ids[::-1] % 3)
    wanted = ids[:asked][::-1]
    assert placement.locate(wanted).tolist() == (wanted % 3).tolist()
    placement.move(wanted[:1], np.array([9]))
    assert placement.locate(wanted).tolist() == [9, *(wanted[1:] % 3).tolist()]
    strangers = np.concatenate([wanted[: asked - 2], [4, 1000]])
    with pytest.raises(EnvIdsNotInGroup, match=r"\[4, 1000\]"):
        placement.locate(strangers)


@pytest.mark.parametrize("n", [1, FEW_IDS, FEW_IDS + 1, 40])
def test_in_order_is_the_same_for_few_and_many_positions(n: int) -> None:
    assert in_order(np.arange(n), n)
    assert not in_order(np.arange(n)[::-1], n) or n == 1
    assert not in_order(np.arange(n), n + 1)


def test_step_answers_come_back_in_request_order_as_models() -> None:
    state = group([0, 1, 2, 3], [7, 8, 7, 8])
    order = np.array([3, 0, 2])
    actions = [EchoAction(message=m) for m in ("ccc", "a", "bb")]
    seen_workers: list[int] = []

    def answer(requests: list[Message]) -> list[Message]:
        seen_workers.extend(r.worker for r in requests if r.worker is not None)
        return [echo_reply(r) for r in requests]

    r = run(step_flow(state, actions, state.resolve(order)), answer)
    assert sorted(seen_workers) == [7, 8]
    assert r.env_ids.tolist() == [3, 0, 2]
    assert [o.echoed_message for o in r.observations] == ["ccc", "a", "bb"]
    assert isinstance(r.observations[0], EchoObservation)
    np.testing.assert_allclose(r.rewards, [0.3, 0.1, 0.2], rtol=1e-6)


def test_per_env_errors_and_whole_worker_failures() -> None:
    state = group([0, 1, 2, 3], [7, 8, 7, 8])

    def answer(requests: list[Message]) -> list[Message]:
        out = []
        for r in requests:
            if r.worker == 7:
                out.append(echo_reply(r, [[2, "ActionValidationError", "bad", ""]]))
            else:
                out.append(error_message(r.request_id, "WorkerLost", "died", r.env_ids))
        return out

    r = run(step_flow(state, [{"message": "m"}] * 4, state.resolve(None)), answer)
    assert isinstance(r.errors[2], ActionValidationError) and r.errors[2].env_id == 2
    assert isinstance(r.errors[1], WorkerLost) and isinstance(r.errors[3], WorkerLost)
    assert r.dones.tolist() == [False, True, True, True]
    assert r.observations[0].echoed_message == "m" and r.observations[1] is None
    assert state.lost == {1, 3}


def test_reset_re_places_lost_envs_first_and_retries_newly_lost_ones() -> None:
    state = group([0, 1, 2, 3], [7, 8, 7, 8])
    state.lost = {1}
    log: list[tuple[str, int | None, list[int]]] = []
    worker_7_died: list[bool] = []

    def answer(requests: list[Message]) -> list[Message]:
        out = []
        for r in requests:
            ids = [] if r.env_ids is None else r.env_ids.tolist()
            log.append((r.op.name, r.worker, ids))
            if r.op is Op.ALLOC:
                out.append(
                    Message(
                        Op.REPLY,
                        r.request_id,
                        env_ids=r.env_ids,
                        parts={"workers": np.full(len(ids), 9, np.int64)},
                    )
                )
            elif r.op is Op.CREATE:
                out.append(
                    Message(
                        Op.REPLY,
                        r.request_id,
                        env_ids=r.env_ids,
                        parts={"errors": []},
                    )
                )
            elif r.worker == 7 and not worker_7_died:
                worker_7_died.append(True)
                out.append(error_message(r.request_id, "SessionLost", "gone", r.env_ids))
            else:
                out.append(echo_reply(r))
        return out

    r = run(reset_flow(state, state.resolve(None), 5, None), answer)
    assert not r.errors
    assert {o.echoed_message for o in r.observations} == {"Echo environment ready!"}
    assert log[0] == ("ALLOC", None, [1]) and log[1] == ("CREATE", 9, [1])
    assert ("ALLOC", None, [0, 2]) in log
    assert state.placement.locate(np.array([0, 1, 2, 3])).tolist() == [9, 9, 9, 8]
    assert not state.lost


def test_reset_seeds_and_kwargs_are_spread_per_env() -> None:
    state = group([0, 1, 2], [1, 2, 1])
    sent: dict[int, tuple[Any, Any]] = {}

    def answer(requests: list[Message]) -> list[Message]:
        for r in requests:
            assert r.env_ids is not None
            for i, env_id in enumerate(r.env_ids.tolist()):
                sent[env_id] = (r.parts["seeds"][i], r.parts["kwargs"][i])
        return [echo_reply(r) for r in requests]

    run(reset_flow(state, state.resolve(None), 10, [{"a": 0}, {"a": 1}, {"a": 2}]), answer)
    assert sent == {0: (10, {"a": 0}), 1: (11, {"a": 1}), 2: (12, {"a": 2})}
    with pytest.raises(BatchSizeMismatch, match="2 seeds for 3 env ids"):
        run(reset_flow(state, state.resolve(None), [1, 2], None), answer)


def test_alloc_creates_and_a_refusal_is_raised_typed() -> None:
    groups_named: list[int | None] = []

    def answer(requests: list[Message]) -> list[Message]:
        r = requests[0]
        groups_named.extend(q.group for q in requests)
        if r.op is Op.ALLOC:
            return [
                Message(
                    Op.REPLY,
                    r.request_id,
                    env_ids=np.arange(4),
                    parts={"workers": np.array([1, 2, 1, 2])},
                    group=0,
                )
            ]
        return [
            Message(
                Op.REPLY,
                q.request_id,
                env_ids=q.env_ids,
                parts={"errors": []},
            )
            for q in requests
        ]

    state = run(alloc_flow(GroupSpec("echo", 4)), answer)
    assert state.env_ids.tolist() == [0, 1, 2, 3]
    # ALLOC names no group; each CREATE names the one ALLOC answered with.
    assert (state.group, groups_named) == (0, [None, 0, 0])
    assert state.models.observation is EchoObservation

    def refuse(requests: list[Message]) -> list[Message]:
        return [error_message(requests[0].request_id, "NoWorkerAvailable", "none host 'x'")]

    with pytest.raises(NoWorkerAvailable, match="none host 'x'"):
        run(alloc_flow(GroupSpec("x", 1)), refuse)


def test_state_flow_builds_models_and_raises_env_errors() -> None:
    state = group([0, 1], [1, 2])
    states = run(state_flow(state, state.resolve(None)), state_answers)
    assert states == [State(episode_id="e", step_count=3)] * 2

    def lost(requests: list[Message]) -> list[Message]:
        return [error_message(r.request_id, "SessionLost", "gone", r.env_ids) for r in requests]

    with pytest.raises(SessionLost):
        run(state_flow(state, state.resolve(None)), lost)


def test_send_guards_and_completed_steps_follow_completion_order() -> None:
    state = group([0, 1, 2, 3], [1, 2, 1, 2])
    subs, requests = step_requests(state, [{"message": "x"}] * 4, state.resolve(None))
    assert len(subs) == 2  # the premise: two sub-batches, one per worker
    for request_id, sub in enumerate(subs, start=1):
        state.sent(request_id, sub)
    with pytest.raises(AlreadyPendingCall, match=r"\[2\]"):
        step_requests(state, [{"message": "y"}], state.resolve([2]))
    assert state.awaited() == [1, 2]
    second = subs[1]
    answer = wire(echo_reply(wire(requests[1])))
    r = completed_steps(state, {2: answer})
    assert r.env_ids.tolist() == second.env_ids.tolist()
    assert state.awaited() == [1]
    state.closed = True
    with pytest.raises(ClosedError):
        step_requests(state, [{"message": "y"}], state.resolve([0]))


def test_recv_without_send_is_refused() -> None:
    with pytest.raises(NoPendingCall):
        group([0], [1]).awaited()


def test_env_ids_are_located_once_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    state = group([0, 1, 2, 3], [7, 8, 7, 8])
    calls: list[list[int]] = []
    locate = Placement.locate

    def counting(self: Placement, env_ids: Any) -> Any:
        calls.append(list(env_ids))
        return locate(self, env_ids)

    monkeypatch.setattr(Placement, "locate", counting)
    run(step_flow(state, [{"message": "m"}] * 2, state.resolve([3, 0])), echo_answers)
    run(state_flow(state, state.resolve([1])), state_answers)
    run(reset_flow(state, state.resolve([2]), None, None), echo_answers)
    assert calls == [[3, 0], [1], [2]]
    run(step_flow(state, [{"message": "m"}] * 4, state.resolve(None)), echo_answers)
    assert len(calls) == 3  # the whole group needs no locating


def echo_answers(requests: list[Message]) -> list[Message]:
    return [echo_reply(r) for r in requests]


def state_answers(requests: list[Message]) -> list[Message]:
    return [
        Message(
            Op.REPLY,
            r.request_id,
            env_ids=r.env_ids,
            parts={"states": [{"episode_id": "e", "step_count": 3}], "errors": []},
        )
        for r in requests
    ]


def test_one_sub_batch_in_request_order_is_returned_without_a_copy() -> None:
    n = 3
    part = BatchResult(
        np.array([5, 6, 7]),
        [{"o": i} for i in range(n)],
        np.arange(n, dtype=np.float32),
        np.zeros(n, np.bool_),
        np.ones(n, np.bool_),
    )
    asked = np.array([5, 6, 7])
    asked.setflags(write=False)  # as a group's own env ids are
    whole = assemble(asked, [(np.arange(n), part)])
    assert whole.observations is part.observations and whole.rewards is part.rewards
    assert whole.truncated is part.truncated and whole.env_ids.tolist() == [5, 6, 7]
    # the result's env ids are the caller's own: writable, and not the request's array
    assert whole.env_ids.flags.writeable and not np.shares_memory(whole.env_ids, asked)
    moved = assemble(np.array([7, 6, 5]), [(np.array([2, 1, 0]), part)])
    assert moved.rewards is not part.rewards and moved.rewards.tolist() == [2, 1, 0]
    assert moved.observations == [{"o": 2}, {"o": 1}, {"o": 0}]


def test_dump_actions_dumps_a_repeated_model_once() -> None:
    action = EchoAction(message="hi")
    rows = dump_actions([action] * 3 + [{"message": "raw"}], 4)
    assert rows[0] is rows[1] is rows[2] and rows[0] == {"message": "hi", "metadata": {}}
    assert rows[3] == {"message": "raw"}
    with pytest.raises(BatchSizeMismatch):
        dump_actions([action], 2)


@pytest.mark.parametrize(
    ("actions", "dtype", "named"),
    [
        ([0.5, 1.7], "int64", 10),  # truncated to [0, 1] before
        ([1.0, np.nan], "int64", 11),
        ([1.0, np.inf], "int64", 11),
        ([3, 300], "uint8", 11),  # wrapped to 44 before
        ([-1, 2], "uint32", 10),
        ([[0.0, 1.0], [1.0, 0.25]], "int32", 11),  # a row of a vector space
    ],
)
def test_array_actions_an_integer_space_cannot_hold_are_refused(
    actions: list[Any], dtype: str, named: int
) -> None:
    layout = ArrayLayout(np.dtype(dtype), np.asarray(actions).shape[1:])
    with pytest.raises(ActionValidationError, match="is not a value of") as refused:
        dump_actions(np.asarray(actions), 2, layout, np.array([10, 11]))
    assert refused.value.env_id == named


def test_array_actions_that_are_values_of_the_space_are_cast() -> None:
    rows = dump_actions([1.0, 0.0, True], 3, ArrayLayout(np.dtype("int64"), ()))
    assert rows.dtype == np.int64 and rows.tolist() == [1, 0, 1]
    floats = dump_actions(np.array([0.1, 2], np.float64), 2, ArrayLayout(np.dtype("float32"), ()))
    assert floats.dtype == np.float32  # a float space takes the nearest float32
    with pytest.raises(BatchSizeMismatch, match="a single action"):
        dump_actions(np.int64(1), 2, ArrayLayout(np.dtype("int64"), ()))


@pytest.mark.parametrize(
    "row",
    [
        [3, "NeedsReset", "call reset()"],  # too short
        [3, "NeedsReset", "m", "", {"errors": []}, "extra"],  # too long
        ["3", "NeedsReset", "m", ""],  # env id not an int
        [3, "NeedsReset", 5, ""],  # message not a str
        [3, "ActionValidationError", "m", "", ["not", "a", "map"]],  # details not a map
        "not a row",
    ],
)
def test_a_malformed_error_row_is_a_protocol_error(row: Any) -> None:
    state = group([3], [1])
    with pytest.raises(ProtocolError, match="malformed error row"):
        run(
            step_flow(state, [EchoAction(message="x")], state.resolve(None)),
            lambda requests: [echo_reply(r, errors=[row]) for r in requests],
        )


def test_an_error_row_may_carry_details() -> None:
    state = group([3], [1])
    details = {"errors": [{"type": "missing", "loc": ["message"], "msg": "Field required"}]}
    row = [3, "ActionValidationError", "1 validation error", "", details]
    result = run(
        step_flow(state, [EchoAction(message="x")], state.resolve(None)),
        lambda requests: [echo_reply(r, errors=[row]) for r in requests],
    )
    error = result.errors[3]
    assert isinstance(error, ActionValidationError)
    assert error.details == details
    assert error.errors == details["errors"]


IMPORTED_BY_PATH: list[str] = []


class Poison(EchoObservation):
    """A model a worker could name; importing it by path would be the client trusting a peer."""

    def __init__(self, **data: Any) -> None:
        IMPORTED_BY_PATH.append("Poison")
        super().__init__(**data)


def test_an_env_the_client_cannot_import_or_that_declares_no_observation_gives_dicts() -> None:
    assert local_models("no_such_module_xyz:Env") == EnvModels()
    assert local_models("gym:NoSuchEnv-v0") == EnvModels()
    # an OpenEnv-style env with no generic parameters: the base Observation would refuse the
    # fields of the subclass it returns, but the env's own models are known by name
    models = local_models("tests.unit.worker_envs:UndeclaredEnv")
    assert (models.observation, models.state) == (None, State)
    assert models.known[type_path(UndeclaredObservation)] is UndeclaredObservation


def test_rows_a_worker_names_are_built_only_as_models_of_the_env_asked_for() -> None:
    undeclared = "tests.unit.worker_envs:UndeclaredEnv"
    row = {"board": ["x"], "legal": [1], "done": False, "reward": 1.0, "metadata": {}}
    row_types = [type_path(UndeclaredObservation), f"{__name__}:Poison", None]

    def answer(requests: list[Message]) -> list[Message]:
        q = requests[0]
        if q.op is Op.ALLOC:
            workers = {"workers": np.array([1, 1, 1])}
            return [Message(Op.REPLY, q.request_id, env_ids=np.arange(3), parts=workers, group=0)]
        if q.op is Op.CREATE:
            return [Message(Op.REPLY, q.request_id, env_ids=q.env_ids, parts={"errors": []})]
        parts: dict[str, Any] = {
            "obs": [row, dict(row), dict(row)],
            "rew": np.ones(3, np.float32),
            "term": np.zeros(3, bool),
            "trunc": np.zeros(3, bool),
            "errors": [],
            "row_types": row_types,
        }
        return [Message(Op.REPLY, q.request_id, env_ids=q.env_ids, parts=parts)]

    state = run(alloc_flow(GroupSpec(undeclared, 3)), answer)
    r = run(step_flow(state, [{}] * 3, state.resolve(None)), answer)
    first, poisoned, plain = r.observations
    assert type(first) is UndeclaredObservation and first.board == ["x"]
    # a class the env does not hold, and a row of the declared (here: no) model: dicts
    assert poisoned == row and plain == row
    assert IMPORTED_BY_PATH == []


def test_row_types_that_do_not_line_up_with_the_rows_are_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="row_types"):
        build_models([{}, {}], None, ["a:B"], {})
