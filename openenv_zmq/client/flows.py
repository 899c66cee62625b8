"""What each group call sends and how it reads the answers, with no I/O.

A flow is a generator: it yields a list of request messages, receives the answers in the same
order, and returns its result. The sync and asyncio clients only pump messages through flows, so
both serve exactly the same behaviour (see ``drive`` in ``client/sync.py`` and ``client/aio.py``).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel

from openenv_zmq.client.batching import (
    ArrayLayout,
    Placement,
    Positions,
    SubBatch,
    Targets,
    assemble,
    build_models,
    env_errors,
    raise_if_error,
    sub_result,
    take,
)
from openenv_zmq.client.results import BatchResult
from openenv_zmq.client.state import ClientState, GroupSpec, GroupState, check_timeout
from openenv_zmq.errors import ActionValidationError, BatchSizeMismatch, ClientError, SessionLost
from openenv_zmq.protocol import EnvIds, Message, Op, Repeated

T = TypeVar("T")
Flow = Generator[list[Message], list[Message], T]
Seeds = int | Sequence[int | None] | None
Actions = Sequence[Any] | np.ndarray
"""One action per env: models or dicts for structured envs, an array (or numbers) for array envs."""
ResetKwargs = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


def per_env(name: str, values: Sequence[Any] | np.ndarray, expected: int) -> None:
    """Check that a per-env argument has one entry per env id."""
    if len(values) != expected:
        raise BatchSizeMismatch(f"{len(values)} {name} for {expected} env ids")


def dump_actions(
    actions: Any,
    expected: int,
    layout: ArrayLayout | None = None,
    env_ids: Sequence[int] | np.ndarray | None = None,
) -> Any:
    """Actions as one array for an array env, else plain dicts (a repeated model dumped once).

    Raises :class:`ActionValidationError` for an action an integer space cannot hold as given
    (``0.5`` or ``1.7`` for a ``Discrete`` env, ``300`` for ``uint8``): numpy's cast would
    truncate or wrap it, and the env would run an action nobody chose. ``env_ids`` name the
    env whose action it is."""
    if layout is not None or isinstance(actions, np.ndarray):
        array = np.asarray(actions)
        if array.ndim == 0:
            raise BatchSizeMismatch(f"a single action for {expected} env ids (one per env id)")
        per_env("actions", array, expected)
        return array if layout is None else _cast_exactly(array, layout.dtype, env_ids)
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


def _cast_exactly(
    array: np.ndarray, dtype: np.dtype[Any], env_ids: Sequence[int] | np.ndarray | None
) -> np.ndarray:
    """``array`` as ``dtype``; into an integer or boolean dtype only when no value changes."""
    if array.dtype == dtype:  # the step path's usual case: nothing to cast or check
        return array
    try:
        with np.errstate(invalid="ignore"):  # NaN and infinities have no integer: caught below
            cast = array.astype(dtype, copy=False)
    except (TypeError, ValueError):
        first = array.reshape(-1)[0] if array.size else None
        raise ActionValidationError(
            f"this env's actions are {dtype} arrays; got {type(first).__name__} ({first!r:.80})",
            -1 if env_ids is None or not len(env_ids) else int(env_ids[0]),
        ) from None
    if dtype.kind not in "iub":
        return cast
    changed = cast != array
    if np.any(changed):
        position = int(np.flatnonzero(changed.reshape(len(array), -1).any(axis=1))[0])
        env_id = -1 if env_ids is None else int(env_ids[position])
        raise ActionValidationError(
            f"action {array[position].tolist()!r} (position {position}) is not a value of this "
            f"env's {dtype} action space",
            env_id,
        )
    return cast


def make_flow(client: ClientState, spec: GroupSpec) -> Flow[GroupState]:
    """Make the group ``spec`` asks for and keep it with the client's groups.

    Raises :class:`ClosedError`, :class:`ClientError` for ``num_envs < 1`` or a bad runtime
    option, and what :func:`alloc_flow` raises.
    """
    client.check_open()
    if spec.num_envs < 1:
        raise ClientError(f"num_envs must be at least 1, got {spec.num_envs}")
    if spec.concurrency is not None and not (
        type(spec.concurrency) is int and spec.concurrency > 0
    ):
        raise ClientError(f"concurrency must be a positive int, got {spec.concurrency!r}")
    check_timeout(spec.timeout_s)
    group = yield from alloc_flow(spec)
    client.groups.append(group)
    return group


def alloc_flow(spec: GroupSpec) -> Flow[GroupState]:
    """Reserve ``spec.num_envs`` slots at the broker, then create the envs on their workers.

    Raises :class:`NoWorkerAvailable` when the slots are not there, or the first env's error.
    """
    alloc = Message(Op.ALLOC, meta={"env": spec.env, "num_envs": spec.num_envs})
    [answer] = yield [alloc]
    raise_if_error(answer)
    assert answer.env_ids is not None
    assert answer.group is not None
    state = GroupState(spec, answer.group, Placement.of(answer.env_ids, answer.parts["workers"]))
    try:
        yield from create_flow(state, state.resolve(None))
    except BaseException:
        yield from close_flow(state)
        raise
    return state


def create_flow(state: GroupState, targets: Targets) -> Flow[None]:
    """Create the targets on their workers; raise the first env's error."""
    spec = state.spec
    meta: dict[str, Any] = {"env": spec.env, "autoreset": spec.autoreset.value}
    if spec.kwargs:
        meta["kwargs"] = spec.kwargs
    if spec.concurrency is not None:
        meta["concurrency"] = spec.concurrency
    if spec.timeout_s is not None:
        meta["timeout_s"] = spec.timeout_s
    subs = targets.split()
    answers = yield [
        Message(Op.CREATE, worker=sub.worker, env_ids=sub.env_ids, meta=meta, group=state.group)
        for sub in subs
    ]
    failures = {}
    for answer in answers:
        raise_if_error(answer)
        state.learn_spaces(answer.meta)
        failures.update(env_errors(answer))
    if failures:
        raise failures[min(failures)]


def replace_flow(state: GroupState, env_ids: EnvIds) -> Flow[None]:
    """Place lost env ids on live workers and create them there."""
    [answer] = yield [
        Message(
            Op.ALLOC,
            env_ids=env_ids,
            meta={"env": state.env, "num_envs": len(env_ids)},
            group=state.group,
        )
    ]
    raise_if_error(answer)
    assert answer.env_ids is not None
    workers = answer.parts["workers"]
    state.placement.move(answer.env_ids, workers)
    yield from create_flow(state, Targets(answer.env_ids, workers))
    state.lost.difference_update(answer.env_ids.tolist())


def _reset_seeds(seed: Seeds, n: int) -> list[int | None]:
    if seed is None:
        return [None] * n
    if isinstance(seed, int | np.integer):
        # Gymnasium's vector convention: env i of the call gets seed + i.
        return [int(seed) + i for i in range(n)]
    per_env("seeds", seed, n)
    return [None if s is None else int(s) for s in seed]


KwargRows = dict[str, Any] | list[dict[str, Any]] | None
"""Reset kwargs as sent: one dict shared by every env, or one per env."""


def _reset_kwargs(kwargs: ResetKwargs, n: int) -> KwargRows:
    if kwargs is None:
        return None
    if isinstance(kwargs, Mapping):
        return dict(kwargs)
    per_env("kwargs", kwargs, n)
    return [dict(k) for k in kwargs]


def _take_kwargs(kwargs: dict[str, Any] | list[dict[str, Any]], positions: Positions) -> Any:
    """The kwargs part of the envs at ``positions``: a shared dict is encoded once for all."""
    if isinstance(kwargs, dict):
        return Repeated(kwargs, len(positions))
    return take(kwargs, positions)


def _reset_requests(
    state: GroupState, targets: Targets, seeds: list[int | None], kwargs: KwargRows
) -> tuple[list[SubBatch], list[Message]]:
    subs = targets.split()
    requests = []
    for sub in subs:
        parts: dict[str, Any] = {"seeds": take(seeds, sub.positions)}
        if kwargs is not None:
            parts["kwargs"] = _take_kwargs(kwargs, sub.positions)
        requests.append(
            Message(
                Op.RESET, worker=sub.worker, env_ids=sub.env_ids, parts=parts, group=state.group
            )
        )
    return subs, requests


def reset_flow(
    state: GroupState, targets: Targets, seed: Seeds, kwargs: ResetKwargs
) -> Flow[BatchResult]:
    """Reset the targets. Lost ones are first placed on a live worker (again if lost meanwhile)."""
    state.check_open()
    env_ids = targets.env_ids
    n = len(env_ids)
    seeds, kwarg_rows = _reset_seeds(seed, n), _reset_kwargs(kwargs, n)
    known_lost = np.fromiter((i for i in env_ids.tolist() if i in state.lost), np.int64)
    if len(known_lost):
        yield from replace_flow(state, known_lost)
        targets = state.resolve(env_ids)  # some of them moved
    subs, requests = _reset_requests(state, targets, seeds, kwarg_rows)
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
            state.resolve(env_ids[positions]),
            take(seeds, positions),
            take(kwarg_rows, positions) if isinstance(kwarg_rows, list) else kwarg_rows,
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
        (sub.positions, sub_result(answer, sub, state.models, state.observation_layout))
        for sub, answer in zip(subs, answers, strict=True)
    ]
    state.note_lost(pieces)
    return pieces


def step_requests(
    state: GroupState, actions: Actions, targets: Targets, timeout_s: float | None = None
) -> tuple[list[SubBatch], list[Message]]:
    """The STEP sub-batches for ``actions`` on the targets; refuses env ids still in flight.
    ``timeout_s`` is the steps' deadline (the group's own by default)."""
    state.check_open()
    check_timeout(timeout_s)
    rows = dump_actions(actions, len(targets), state.action_layout, targets.env_ids)
    state.check_not_in_flight(targets.env_ids)
    subs = targets.split()
    meta = {} if timeout_s is None else {"timeout_s": timeout_s}
    return subs, [
        Message(
            Op.STEP,
            worker=sub.worker,
            env_ids=sub.env_ids,
            meta=meta,
            parts={"actions": take(rows, sub.positions)},
            group=state.group,
        )
        for sub in subs
    ]


def step_flow(
    state: GroupState, actions: Actions, targets: Targets, timeout_s: float | None = None
) -> Flow[BatchResult]:
    subs, requests = step_requests(state, actions, targets, timeout_s)
    answers = yield requests
    return assemble(targets.env_ids, _read_answers(state, subs, answers), state.observation_layout)


def completed_steps(state: GroupState, answers: Mapping[int, Message]) -> BatchResult:
    """The ``send()`` sub-batches answered in ``answers`` (by request id), in the order they
    were sent, joined as one result (EnvPool's ``recv``); they are no longer in flight."""
    done = [
        (state.in_flight.pop(request_id), answer)
        for request_id, answer in answers.items()
        if request_id in state.in_flight
    ]
    offsets = np.cumsum([0] + [len(sub.env_ids) for sub, _ in done])
    local = [
        replace(sub, positions=np.arange(offsets[i], offsets[i + 1]))
        for i, (sub, _) in enumerate(done)
    ]
    pieces = _read_answers(state, local, [answer for _, answer in done])
    env_ids = np.concatenate([sub.env_ids for sub, _ in done]) if done else np.empty(0, np.int64)
    return assemble(env_ids, pieces, state.observation_layout)


def state_flow(state: GroupState, targets: Targets) -> Flow[list[Any]]:
    """Each env's state in the targets' order; raises the first env's error if any failed."""
    state.check_open()
    subs = targets.split()
    answers = yield [
        Message(Op.STATE, worker=s.worker, env_ids=s.env_ids, group=state.group) for s in subs
    ]
    states: list[Any] = [None] * len(targets)
    failures = {}
    for sub, answer in zip(subs, answers, strict=True):
        raise_if_error(answer)
        failures.update(env_errors(answer))
        if answer.op is Op.ERROR:
            continue
        models = state.models
        rows = build_models(
            answer.parts["states"], models.state, answer.parts.get("row_types"), models.known
        )
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
    subs = state.resolve(None).split()
    answers = yield [
        Message(Op.CLOSE, worker=s.worker, env_ids=s.env_ids, group=state.group) for s in subs
    ]
    for answer in answers:
        raise_if_error(answer)
