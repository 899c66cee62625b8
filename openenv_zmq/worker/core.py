"""The worker's answers to requests, sans I/O: env slots and their stepping.

:class:`WorkerCore` answers one request at a time (``handle(frames) -> frames``) for the thousands
of env instances it hosts. It opens no socket: the zmq loop in :mod:`openenv_zmq.worker.loop`
pumps frames through it.
"""

from __future__ import annotations

import inspect
import json
import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, cast

import numpy as np
from pydantic import BaseModel, ValidationError

from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.batch_models import dump_many, validate_many
from openenv_zmq.env import VectorEnvironment
from openenv_zmq.errors import EnvNotFound, OpenEnvZmqError, ProtocolError
from openenv_zmq.protocol import (
    DEFAULT_LIMITS,
    EnvIds,
    Frame,
    Limits,
    Message,
    Op,
    decode,
    encode,
    error_message,
    pack,
    readable_request_id,
)
from openenv_zmq.registry import EnvTypes, env_types, resolve_env, type_path
from openenv_zmq.types import State
from openenv_zmq.worker.vector import VectorTable, space_meta

log = logging.getLogger(__name__)

ErrorRow = list[Any]
"""``[env_id, type name, message, traceback]``, one per failed env in a reply's ``errors``."""


class SlotStatus(Enum):
    """Where one env instance is in its episode."""

    NEEDS_RESET = "needs_reset"
    RUNNING = "running"
    DONE = "done"


@dataclass(slots=True)
class _Kind:
    """What the worker needs to know about one env class, worked out once per class."""

    cls: type[Any]
    types: EnvTypes
    reset_params: frozenset[str] | None
    """Keyword arguments ``reset`` accepts; ``None`` when it takes ``**kwargs`` (all pass)."""
    vector: bool

    @classmethod
    def of(cls, env_cls: type) -> _Kind:
        types = env_types(env_cls)
        if issubclass(env_cls, VectorEnvironment):
            return cls(env_cls, types, None, vector=True)
        reset = cast(Any, env_cls).reset  # resolve_env checked that it exists
        params = list(inspect.signature(reset).parameters.values())[1:]  # drop self
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            accepted = None
        else:
            accepted = frozenset(
                p.name
                for p in params
                if p.kind
                in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            )
        return cls(env_cls, types, accepted, vector=False)


@dataclass(slots=True)
class _Slot:
    env: Any
    kind: _Kind
    autoreset: AutoresetMode
    status: SlotStatus = SlotStatus.NEEDS_RESET

    def transition(self, op: Op, done: bool | None) -> None:
        """Every status change after a reset or step; ``done`` is ``None`` when the env raised.

        A reset that raised leaves no episode to step; a step that raised leaves the episode as
        it was (OpenEnv keeps the session). Stepping a DONE env is allowed: autoreset is off.
        """
        if done is None:
            if op is Op.RESET:
                self.status = SlotStatus.NEEDS_RESET
            return
        self.status = SlotStatus.DONE if done else SlotStatus.RUNNING

    def close(self) -> None:
        # resolve_env only requires reset/step/state, so an env class may have no close()
        close = getattr(self.env, "close", None)
        if close is not None:
            close()


def _exception_row(env_id: int, exc: BaseException) -> ErrorRow:
    """An error row for an exception being handled (the traceback is the current one)."""
    return [env_id, type(exc).__name__, str(exc), traceback.format_exc()]


class _Rows:
    """The per-env rows of a RESET / STEP (``obs``) or STATE (``states``) reply.

    Rows start zeroed, which is what a failed env's row must hold; a row is filled only once
    everything about it has been computed, so a failure half-way leaves it zeroed.
    """

    def __init__(self, env_ids: list[int], part: str) -> None:
        n = len(env_ids)
        self.env_ids = env_ids
        self.part = part
        self.values: list[Any] = [None] * n
        self.final: list[Any] | None = None
        """Final observations of episodes that ended and were reset in this same step."""
        # Plain lists while filling: a numpy item assignment per env costs ten times more.
        self.rewards = [0.0] * n
        self.terminated = [False] * n
        self.errors: list[ErrorRow] = []

    def put_observation(self, i: int, obs: Any) -> bool:
        """Fill row ``i`` from an observation model (dumped at encode); returns its ``done``."""
        reward = 0.0 if obs.reward is None else float(obs.reward)
        done = bool(obs.done)
        self.values[i] = obs
        self.rewards[i] = reward
        self.terminated[i] = done
        return done

    def put_final(self, i: int, observation: Any) -> None:
        if self.final is None:
            self.final = [None] * len(self.values)
        self.final[i] = observation

    def clear(self, i: int) -> None:
        self.values[i] = None
        self.rewards[i] = 0.0
        self.terminated[i] = False

    def message(self, request: Message) -> Message:
        parts: dict[str, Any] = {self.part: self.values}
        if self.part == "obs":
            parts["rew"] = np.array(self.rewards, dtype=np.float32)
            parts["term"] = np.array(self.terminated, dtype=np.bool_)
            parts["trunc"] = np.zeros(len(self.values), dtype=np.bool_)
        if self.final is not None:
            parts["final_obs"] = self.final
        parts["errors"] = self.errors
        return Message(Op.REPLY, request.request_id, env_ids=request.env_ids, parts=parts)

    def _dump(self, models: list[Any]) -> list[Any]:
        """Every model row as a dict, in one pydantic call; a model that cannot be dumped fails
        its env alone (found row by row, on this rare path only)."""
        present = [m for m in models if m is not None]
        dumped = dump_many(BaseModel, present)
        if dumped is not None:
            rows = iter(dumped)
            return [None if m is None else next(rows) for m in models]
        out: list[Any] = []
        for i, model in enumerate(models):
            try:
                out.append(None if model is None else model.model_dump())
            except Exception as exc:
                out.append(None)
                self.clear(i)
                self.errors.append(_exception_row(self.env_ids[i], exc))
        return out

    def encode(self, request: Message) -> list[Frame]:
        self.values = self._dump(self.values)
        if self.final is not None:
            self.final = self._dump(self.final)
        try:
            return encode(self.message(request))
        except ProtocolError:
            pass
        # Some env returned a value msgpack cannot carry: fail those envs, not the whole batch.
        # Only this rare path pays for packing rows one by one.
        for i, value in enumerate(self.values):
            if value is None:
                continue
            try:
                pack(value)
            except ProtocolError as exc:
                self.clear(i)
                self.errors.append([self.env_ids[i], "EnvExecutionError", str(exc), ""])
        return encode(self.message(request))


def request_ids(request: Message) -> EnvIds:
    """The env ids of a worker op as an array (the codec guarantees they are there)."""
    ids = request.env_ids
    if ids is None:
        raise ProtocolError(f"{request.op.name} needs env ids")
    return ids


def _env_ids(request: Message) -> list[int]:
    ids: EnvIds | None = request.env_ids
    if ids is None:  # the codec refuses worker ops without ids; this keeps the type checker honest
        raise ProtocolError(f"{request.op.name} needs env ids")
    env_ids: list[int] = ids.tolist()
    return env_ids


def _per_env_part(request: Message, name: str, n: int) -> list[Any] | None:
    """A part holding one item per env id, or ``None`` when the request does not carry it."""
    value = request.parts.get(name)
    if value is None:
        return None
    if type(value) is not list:
        raise ProtocolError(f"{request.op.name} part {name!r} must be a list, one item per env id")
    if len(value) != n:
        raise ProtocolError(
            f"{request.op.name} has {len(value)} {name} for {n} env id(s); they must match"
        )
    return value


class WorkerCore:
    """The env slots of one worker and the answers to CREATE / RESET / STEP / STATE / CLOSE.

    ``envs`` are the env names or ``module:Class`` specs this worker hosts; each is resolved here,
    so a bad name raises :class:`EnvNotFound` before the worker registers. ``capacity`` bounds the
    number of live env instances. Call :meth:`handle` once per request and :meth:`drop_all` when
    the broker forgets this worker.
    """

    def __init__(self, envs: Sequence[str], capacity: int, limits: Limits = DEFAULT_LIMITS) -> None:
        if not envs:
            raise ValueError("a worker must host at least one env")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._kinds = {name: _Kind.of(resolve_env(name)) for name in envs}
        self._capacity = capacity
        self._limits = limits
        self._slots: dict[int, _Slot] = {}
        self._vector = VectorTable()
        self._handlers: dict[Op, Callable[[Message], list[Frame]]] = {
            Op.CREATE: self._create,
            Op.RESET: self._reset,
            Op.STEP: self._step,
            Op.STATE: self._state,
            Op.CLOSE: self._close,
        }

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def slots_used(self) -> int:
        return len(self._slots) + len(self._vector)

    def status(self, env_id: int) -> SlotStatus | None:
        """Where env ``env_id`` is in its episode; ``None`` if this worker does not host it."""
        slot = self._slots.get(env_id)
        return None if slot is None else slot.status

    def handle(self, frames: Sequence[Frame]) -> list[Frame]:
        """Answer one request (frames without the route). Never raises.

        Frames that do not decode get an ``ERROR`` named after the :class:`ProtocolError` subclass;
        an env's failure is reported in its row of the ``REPLY``, never for the whole batch.
        """
        try:
            request = decode(frames, self._limits)
        except ProtocolError as exc:
            request_id = readable_request_id(frames, self._limits)
            return encode(error_message(request_id, type(exc).__name__, str(exc)))
        handler = self._handlers.get(request.op)
        if handler is None:
            return encode(
                error_message(
                    request.request_id,
                    "ProtocolError",
                    f"a worker does not handle {request.op.name}",
                )
            )
        try:
            return handler(request)
        except OpenEnvZmqError as exc:
            return encode(error_message(request.request_id, type(exc).__name__, str(exc)))
        except Exception as exc:
            # A bug here must cost one request, not the worker and every env on it.
            log.exception("%s request %d failed", request.op.name, request.request_id)
            return encode(
                error_message(
                    request.request_id,
                    type(exc).__name__,
                    str(exc),
                    traceback=traceback.format_exc(),
                )
            )

    def drop_all(self) -> None:
        """Close and forget every env instance. An env whose ``close()`` raises is forgotten too."""
        slots, self._slots = self._slots, {}
        failed = self._vector.drop_all()
        for slot in slots.values():
            try:
                slot.close()
            except Exception:
                failed += 1
        if failed:
            log.warning("%d of %d env(s) raised in close() while dropping all", failed, len(slots))

    def _create(self, request: Message) -> list[Frame]:
        name = request.meta["env"]
        kind = self._kinds.get(name)
        if kind is None:
            raise EnvNotFound(f"this worker hosts {', '.join(self._kinds)}; not {name!r}")
        kwargs: dict[str, Any] = request.meta.get("kwargs", {})
        autoreset = AutoresetMode(request.meta.get("autoreset", AutoresetMode.DISABLED))
        env_ids = _env_ids(request)
        meta: dict[str, Any] = {"types": kind.types.to_wire()}
        errors: list[ErrorRow] = []
        taken = [i for i in env_ids if i in self._slots] + [
            int(i) for i in request_ids(request)[self._vector.owns(request_ids(request))]
        ]
        if taken or self.slots_used + len(env_ids) > self._capacity:
            reason = (
                f"env id(s) {taken[:10]} already exist"
                if taken
                else f"worker is full (capacity {self._capacity}, {self.slots_used} used)"
            )
            errors = [[env_id, "EnvExecutionError", reason, ""] for env_id in env_ids]
        elif kind.vector:
            try:
                host = self._vector.create(kind.cls, name, request_ids(request), kwargs, autoreset)
            except Exception as exc:
                errors = [_exception_row(env_id, exc) for env_id in env_ids]
            else:
                meta["types"] = {"state": type_path(State)}
                meta["spaces"] = {
                    "action": space_meta(host.env.action_space),
                    "observation": space_meta(host.env.observation_space),
                }
        else:
            for env_id in env_ids:
                try:
                    self._slots[env_id] = _Slot(kind.cls(**kwargs), kind, autoreset)
                except Exception as exc:
                    errors.append(_exception_row(env_id, exc))
        return encode(
            Message(
                Op.REPLY,
                request.request_id,
                env_ids=request.env_ids,
                meta=meta,
                parts={"errors": errors},
            )
        )

    def _vector_request(self, request: Message) -> bool:
        """Whether the request addresses vector-hosted envs (it may not mix the two kinds)."""
        owned = self._vector.owns(request_ids(request))
        if not owned.any():
            return False
        if not owned.all() and any(i in self._slots for i in _env_ids(request)):
            raise ProtocolError(f"{request.op.name} mixes array and structured envs")
        return True

    def _vector_reply(self, request: Message, parts: dict[str, Any]) -> list[Frame]:
        return encode(Message(Op.REPLY, request.request_id, env_ids=request.env_ids, parts=parts))

    def _reset(self, request: Message) -> list[Frame]:
        env_ids = _env_ids(request)
        n = len(env_ids)
        seeds = _per_env_part(request, "seeds", n)
        kwargs = _per_env_part(request, "kwargs", n)
        if seeds is not None and not all(s is None or type(s) is int for s in seeds):
            raise ProtocolError("RESET seeds must each be an int or None")
        if kwargs is not None and not all(
            type(kw) is dict and all(type(k) is str for k in kw) for kw in kwargs
        ):
            raise ProtocolError("RESET kwargs must each be a map with string keys")
        if self._vector_request(request):
            reply = self._vector.reset(request_ids(request), seeds)
            return self._vector_reply(request, reply.parts())
        rows = _Rows(env_ids, "obs")
        for i, env_id in enumerate(env_ids):
            slot = self._slots.get(env_id)
            if slot is None:
                rows.errors.append(_unknown(env_id))
                continue
            call: dict[str, Any] = {"seed": None}
            if kwargs is not None:
                call.update(kwargs[i])
            if seeds is not None:
                call["seed"] = seeds[i]
            self._reset_slot(env_id, slot, call, rows, i)
        return rows.encode(request)

    def _reset_slot(
        self, env_id: int, slot: _Slot, call: dict[str, Any], rows: _Rows, i: int
    ) -> None:
        accepted = slot.kind.reset_params
        if accepted is not None:
            # OpenEnv drops the reset arguments an env's signature does not take
            call = {k: v for k, v in call.items() if k in accepted}
        try:
            done: bool | None = rows.put_observation(i, slot.env.reset(**call))
        except Exception as exc:
            rows.errors.append(_exception_row(env_id, exc))
            done = None
        slot.transition(Op.RESET, done)

    def _step(self, request: Message) -> list[Frame]:
        actions = request.parts.get("actions")
        if actions is None:
            raise ProtocolError("STEP needs an 'actions' part")
        if not isinstance(actions, list | np.ndarray):
            raise ProtocolError("STEP actions must be a list or an array, one per env id")
        if len(actions) != len(request_ids(request)):
            raise ProtocolError(
                f"STEP has {len(actions)} actions for {len(request_ids(request))} env id(s);"
                " they must match"
            )
        if self._vector_request(request):
            reply = self._vector.step(request_ids(request), actions)
            return self._vector_reply(request, reply.parts())
        if not isinstance(actions, list):
            raise ProtocolError("STEP actions for structured envs must be a list of maps")
        env_ids = _env_ids(request)
        rows = _Rows(env_ids, "obs")
        ready: list[tuple[int, int, _Slot]] = []
        for i, env_id in enumerate(env_ids):
            slot = self._slots.get(env_id)
            if slot is None:
                rows.errors.append(_unknown(env_id))
            elif slot.status is SlotStatus.NEEDS_RESET:
                rows.errors.append([env_id, "NeedsReset", "call reset() before step()", ""])
            elif slot.status is SlotStatus.DONE and slot.autoreset is AutoresetMode.NEXT_STEP:
                self._reset_slot(env_id, slot, {"seed": None}, rows, i)
                rows.rewards[i] = 0.0  # Gymnasium's next_step: the resetting step earns nothing
            else:
                ready.append((i, env_id, slot))
        parsed = _validated_actions(ready, actions, rows)
        for (i, env_id, slot), action in zip(ready, parsed, strict=True):
            if action is None:
                continue
            try:
                done: bool | None = rows.put_observation(i, slot.env.step(action))
            except Exception as exc:
                rows.errors.append(_exception_row(env_id, exc))
                done = None
            slot.transition(Op.STEP, done)
            if done and slot.autoreset is AutoresetMode.SAME_STEP:
                final, reward = rows.values[i], rows.rewards[i]
                self._reset_slot(env_id, slot, {"seed": None}, rows, i)
                rows.put_final(i, final)
                rows.rewards[i], rows.terminated[i] = reward, True
        return rows.encode(request)

    def _state(self, request: Message) -> list[Frame]:
        if self._vector_request(request):
            states, errors = self._vector.state(request_ids(request))
            return self._vector_reply(request, {"states": states, "errors": errors})
        env_ids = _env_ids(request)
        rows = _Rows(env_ids, "states")
        for i, env_id in enumerate(env_ids):
            slot = self._slots.get(env_id)
            if slot is None:
                rows.errors.append(_unknown(env_id))
                continue
            try:
                rows.values[i] = slot.env.state
            except Exception as exc:
                rows.errors.append(_exception_row(env_id, exc))
        return rows.encode(request)

    def _close(self, request: Message) -> list[Frame]:
        if self._vector_request(request):
            errors = self._vector.close(request_ids(request))
            return self._vector_reply(request, {"errors": errors})
        errors = []
        for env_id in _env_ids(request):
            slot = self._slots.pop(env_id, None)
            if slot is None:
                errors.append(_unknown(env_id))
                continue
            try:
                slot.close()
            except Exception as exc:
                errors.append(_exception_row(env_id, exc))
        return encode(
            Message(Op.REPLY, request.request_id, env_ids=request.env_ids, parts={"errors": errors})
        )


def _validated_actions(
    ready: list[tuple[int, int, _Slot]], actions: list[Any], rows: _Rows
) -> list[Any]:
    """Each ready env's action as its env's model, ``None`` where it failed (error recorded).

    Validates all actions of one model in one pydantic call; only a batch with a bad action
    pays for validating row by row to find it.
    """
    models = {slot.kind.types.action for _, _, slot in ready}
    if len(models) == 1:
        batch = validate_many(models.pop(), [actions[i] for i, _, _ in ready])
        if batch is not None:
            return list(batch)
    parsed: list[Any] = []
    for i, env_id, slot in ready:
        try:
            parsed.append(slot.kind.types.action.model_validate(actions[i]))
        except ValidationError as exc:
            # pydantic's error list travels too, so OpenEnv's VALIDATION_ERROR can carry it
            details = {"errors": json.loads(exc.json())}
            rows.errors.append([env_id, "ActionValidationError", str(exc), "", details])
            parsed.append(None)
        except Exception as exc:  # a validator of the env's own that raised something else
            rows.errors.append(_exception_row(env_id, exc))
            parsed.append(None)
    return parsed


def _unknown(env_id: int) -> ErrorRow:
    return [env_id, "EnvNotOnWorker", f"this worker hosts no env with id {env_id}", ""]
