"""What each group call sends and how it reads the answers, with no I/O.

A flow is a generator: it yields a list of request messages, receives the answers in the same
order, and returns its result. The sync and asyncio clients only pump messages through flows, so
both serve exactly the same behaviour (see ``drive`` in ``client/sync.py`` and ``client/aio.py``).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel

from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.client.batching import (
    ArrayLayout,
    Placement,
    Positions,
    SubBatch,
    assemble,
    build_models,
    env_errors,
    raise_if_error,
    split_by_worker,
    sub_result,
    take,
)
from openenv_zmq.client.results import BatchResult
from openenv_zmq.errors import (
    AlreadyPendingCall,
    BatchSizeMismatch,
    ClosedError,
    EnvNotFound,
    SessionLost,
    WorkerLost,
)
from openenv_zmq.protocol import EnvIds, Message, Op
from openenv_zmq.registry import import_object

T = TypeVar("T")
Flow = Generator[list[Message], list[Message], T]
Seeds = int | Sequence[int | None] | None
Actions = Sequence[Any] | np.ndarray
"""One action per env: models or dicts for structured envs, an array (or numbers) for array envs."""
ResetKwargs = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


def _import_model(path: str | None) -> type[BaseModel] | None:
    """The model class at ``path`` if this process can import it; dicts are returned otherwise."""
    if path is None:
        return None
    try:
        model = import_object(path)
    except EnvNotFound:
        return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


@dataclass
class GroupState:
    """Everything a client knows about one env group."""

    env: str
    kwargs: dict[str, Any]
    placement: Placement
    autoreset: AutoresetMode = AutoresetMode.DISABLED
    observation_model: type[BaseModel] | None = None
    state_model: type[BaseModel] | None = None
    observation_layout: ArrayLayout | None = None
    """Set for array envs: observations come back as one array."""
    action_layout: ArrayLayout | None = None
    lost: set[int] = field(default_factory=set)
    in_flight: set[int] = field(default_factory=set)
    closed: bool = False

    @property
    def env_ids(self) -> EnvIds:
        return self.placement.env_ids

    def learn_types(self, meta: Mapping[str, Any]) -> None:
        """Read what a CREATE answer says about the env's models and array spaces."""
        spaces = meta.get("spaces", {})
        if "observation" in spaces:
            self.observation_layout = ArrayLayout.from_wire(spaces["observation"])
        if "action" in spaces:
            self.action_layout = ArrayLayout.from_wire(spaces["action"])
        types = meta.get("types", {})
        if self.observation_model is None:
            self.observation_model = _import_model(types.get("observation"))
        if self.state_model is None:
            self.state_model = _import_model(types.get("state"))

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError(f"the {self.env!r} env group is closed")

    def resolve(self, env_ids: Sequence[int] | EnvIds | None) -> EnvIds:
        """The env ids a call names (all the group's when ``None``), checked against the group."""
        if env_ids is None:
            return self.placement.env_ids
        ids = np.asarray(env_ids, dtype=np.int64).reshape(-1)
        self.placement.locate(ids)
        return ids

    def plan(self, env_ids: EnvIds) -> list[SubBatch]:
        return split_by_worker(env_ids, self.placement.locate(env_ids))

    def note_lost(self, pieces: Sequence[tuple[Positions, BatchResult]]) -> None:
        for _, piece in pieces:
            for env_id, error in piece.errors.items():
                if isinstance(error, WorkerLost | SessionLost):
                    self.lost.add(env_id)


def per_env(name: str, values: Sequence[Any] | np.ndarray, expected: int) -> None:
    """Check that a per-env argument has one entry per env id."""
    if len(values) != expected:
        raise BatchSizeMismatch(f"{len(values)} {name} for {expected} env ids")


def dump_actions(actions: Any, expected: int, layout: ArrayLayout | None = None) -> Any:
    """Actions as one array for an array env, else plain dicts (a repeated model dumped once)."""
    if layout is not None or isinstance(actions, np.ndarray):
        array = np.asarray(actions, dtype=None if layout is None else layout.dtype)
        per_env("actions", array, expected)
        return array
    per_env("actions", actions, expected)
    dumped: dict[int, Any] = {}
    out = []
    for action in actions:
        if isinstance(action, BaseModel):
            key = id(action)
            if key not in dumped:
                dumped[key] = action.model_dump()
            out.append(dumped[key])
        else:
            out.append(action)
    return out


def alloc_flow(
    env: str, num_envs: int, kwargs: dict[str, Any], autoreset: AutoresetMode
) -> Flow[GroupState]:
    """Reserve ``num_envs`` slots at the broker, then create the envs on their workers."""
    [answer] = yield [Message(Op.ALLOC, meta={"env": env, "num_envs": num_envs})]
    raise_if_error(answer)
    assert answer.env_ids is not None
    placement = Placement.of(answer.env_ids, answer.parts["workers"])
    state = GroupState(env, kwargs, placement, autoreset)
    try:
        yield from create_flow(state, state.env_ids)
    except BaseException:
        yield from close_flow(state)
        raise
    return state


def create_flow(state: GroupState, env_ids: EnvIds) -> Flow[None]:
    """Create ``env_ids`` on the workers they are placed on; raise the first env's error."""
    meta: dict[str, Any] = {"env": state.env, "autoreset": state.autoreset.value}
    if state.kwargs:
        meta["kwargs"] = state.kwargs
    subs = state.plan(env_ids)
    answers = yield [
        Message(Op.CREATE, worker=sub.worker, env_ids=sub.env_ids, meta=meta) for sub in subs
    ]
    failures = {}
    for answer in answers:
        raise_if_error(answer)
        state.learn_types(answer.meta)
        failures.update(env_errors(answer))
    if failures:
        raise failures[min(failures)]


def replace_flow(state: GroupState, env_ids: EnvIds) -> Flow[None]:
    """Place lost env ids on live workers and create them there."""
    [answer] = yield [
        Message(Op.ALLOC, env_ids=env_ids, meta={"env": state.env, "num_envs": len(env_ids)})
    ]
    raise_if_error(answer)
    assert answer.env_ids is not None
    state.placement.move(answer.env_ids, answer.parts["workers"])
    yield from create_flow(state, answer.env_ids)
    state.lost.difference_update(answer.env_ids.tolist())


def _reset_seeds(seed: Seeds, n: int) -> list[int | None]:
    if seed is None:
        return [None] * n
    if isinstance(seed, int | np.integer):
        # Gymnasium's vector convention: env i of the call gets seed + i.
        return [int(seed) + i for i in range(n)]
    per_env("seeds", seed, n)
    return [None if s is None else int(s) for s in seed]


def _reset_kwargs(kwargs: ResetKwargs, n: int) -> list[dict[str, Any]] | None:
    if kwargs is None:
        return None
    if isinstance(kwargs, Mapping):
        return [dict(kwargs)] * n
    per_env("kwargs", kwargs, n)
    return [dict(k) for k in kwargs]


def _reset_requests(
    state: GroupState,
    env_ids: EnvIds,
    seeds: list[int | None],
    kwargs: list[dict[str, Any]] | None,
) -> tuple[list[SubBatch], list[Message]]:
    subs = state.plan(env_ids)
    requests = []
    for sub in subs:
        parts: dict[str, Any] = {"seeds": take(seeds, sub.positions)}
        if kwargs is not None:
            parts["kwargs"] = take(kwargs, sub.positions)
        requests.append(Message(Op.RESET, worker=sub.worker, env_ids=sub.env_ids, parts=parts))
    return subs, requests


def reset_flow(
    state: GroupState, env_ids: EnvIds, seed: Seeds, kwargs: ResetKwargs
) -> Flow[BatchResult]:
    """Reset ``env_ids``. Lost ones are first placed on a live worker (again if lost meanwhile)."""
    state.check_open()
    n = len(env_ids)
    seeds, kwarg_rows = _reset_seeds(seed, n), _reset_kwargs(kwargs, n)
    known_lost = np.fromiter((i for i in env_ids.tolist() if i in state.lost), np.int64)
    if len(known_lost):
        yield from replace_flow(state, known_lost)
    subs, requests = _reset_requests(state, env_ids, seeds, kwarg_rows)
    answers = yield requests
    pieces = _read_answers(state, subs, answers)
    lost_now = np.fromiter(
        (i for _, p in pieces for i, e in p.errors.items() if isinstance(e, SessionLost)), np.int64
    )
    if len(lost_now):
        yield from replace_flow(state, lost_now)
        positions = np.flatnonzero(np.isin(env_ids, lost_now))
        retry_subs, retry = _reset_requests(
            state,
            env_ids[positions],
            take(seeds, positions),
            None if kwarg_rows is None else take(kwarg_rows, positions),
        )
        answers = yield retry
        retried = _read_answers(state, retry_subs, answers)
        for _, piece in pieces:
            for env_id in lost_now.tolist():
                piece.errors.pop(env_id, None)
        pieces += [(positions[p], r) for p, r in retried]
    return assemble(env_ids, pieces, state.observation_layout)


def _read_answers(
    state: GroupState, subs: Sequence[SubBatch], answers: Sequence[Message]
) -> list[tuple[Positions, BatchResult]]:
    pieces = [
        (sub.positions, sub_result(answer, sub, state.observation_model, state.observation_layout))
        for sub, answer in zip(subs, answers, strict=True)
    ]
    state.note_lost(pieces)
    return pieces


def step_requests(
    state: GroupState, actions: Actions, env_ids: EnvIds
) -> tuple[list[SubBatch], list[Message]]:
    """The STEP sub-batches for ``actions`` on ``env_ids``; refuses env ids still in flight."""
    state.check_open()
    rows = dump_actions(actions, len(env_ids), state.action_layout)
    if state.in_flight and not state.in_flight.isdisjoint(env_ids.tolist()):
        busy = sorted(state.in_flight.intersection(env_ids.tolist()))[:10]
        raise AlreadyPendingCall(f"env ids still in flight from send(): {busy}; recv() them first")
    subs = state.plan(env_ids)
    return subs, [
        Message(
            Op.STEP,
            worker=sub.worker,
            env_ids=sub.env_ids,
            parts={"actions": take(rows, sub.positions)},
        )
        for sub in subs
    ]


def step_flow(state: GroupState, actions: Actions, env_ids: EnvIds) -> Flow[BatchResult]:
    subs, requests = step_requests(state, actions, env_ids)
    answers = yield requests
    return assemble(env_ids, _read_answers(state, subs, answers), state.observation_layout)


def completed_steps(state: GroupState, done: Sequence[tuple[SubBatch, Message]]) -> BatchResult:
    """The sub-batches that finished, joined in the order they finished (EnvPool's ``recv``)."""
    offsets = np.cumsum([0] + [len(sub.env_ids) for sub, _ in done])
    local = [
        replace(sub, positions=np.arange(offsets[i], offsets[i + 1]))
        for i, (sub, _) in enumerate(done)
    ]
    pieces = _read_answers(state, local, [answer for _, answer in done])
    for sub, _ in done:
        state.in_flight.difference_update(sub.env_ids.tolist())
    env_ids = np.concatenate([sub.env_ids for sub, _ in done]) if done else np.empty(0, np.int64)
    return assemble(env_ids, pieces, state.observation_layout)


def state_flow(state: GroupState, env_ids: EnvIds) -> Flow[list[Any]]:
    """Each env's state in ``env_ids`` order; raises the first env's error if any failed."""
    state.check_open()
    subs = state.plan(env_ids)
    answers = yield [Message(Op.STATE, worker=s.worker, env_ids=s.env_ids) for s in subs]
    states: list[Any] = [None] * len(env_ids)
    failures = {}
    for sub, answer in zip(subs, answers, strict=True):
        raise_if_error(answer)
        failures.update(env_errors(answer))
        if answer.op is Op.ERROR:
            continue
        rows = build_models(answer.parts["states"], state.state_model)
        for position, row in zip(sub.positions.tolist(), rows, strict=True):
            states[position] = row
    if failures:
        raise failures[min(failures)]
    return states


def close_flow(state: GroupState) -> Flow[None]:
    """Close every env of the group on its worker; the broker frees the slots."""
    if state.closed:
        return
    state.closed = True
    subs = state.plan(state.env_ids)
    answers = yield [Message(Op.CLOSE, worker=s.worker, env_ids=s.env_ids) for s in subs]
    for answer in answers:
        raise_if_error(answer)
