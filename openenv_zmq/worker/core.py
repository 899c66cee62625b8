"""The worker's answers to requests, sans I/O: decode, pick the slot table, answer.

:class:`WorkerCore` answers one request at a time (``handle(frames) -> frames``) for the thousands
of env instances it hosts, structured ones in a :class:`SlotTable` and array ones in a
:class:`VectorTable`. It opens no socket: the zmq loop in :mod:`openenv_zmq.worker.loop` pumps
frames through it.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.errors import EnvNotFound, OpenEnvZmqError, ProtocolError, WorkerLost
from openenv_zmq.protocol import (
    DEFAULT_LIMITS,
    EnvIds,
    Frame,
    Limits,
    Message,
    Op,
    decode,
    decode_header,
    encode,
    error_message,
    readable_request_id,
)
from openenv_zmq.registry import resolve_env
from openenv_zmq.spaces import space_to_wire
from openenv_zmq.worker.calls import Call
from openenv_zmq.worker.kinds import EnvKind, Runtime
from openenv_zmq.worker.rows import ErrorRow, Reply, error_row, exception_row, reply_frames
from openenv_zmq.worker.slots import Deferred, SlotTable
from openenv_zmq.worker.status import SlotStatus
from openenv_zmq.worker.vector import VectorTable

log = logging.getLogger(__name__)


class Selection(Protocol):
    """A request's env ids located in one slot table, answered with exactly one call."""

    def reset(self, seeds: list[Any] | None, kwargs: list[Any] | None) -> Reply: ...
    def step(self, actions: Any, timeout_s: float | None) -> Reply: ...
    def state(self) -> Reply: ...
    def close(self) -> Reply: ...


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
        self._kinds = {name: EnvKind.of(resolve_env(name)) for name in envs}
        self._capacity = capacity
        self._limits = limits
        self._slots = SlotTable()
        self._vector = VectorTable()
        self._handlers: dict[Op, Callable[[Message], list[Frame] | Pending]] = {
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
        """Where structured env ``env_id`` is in its episode; ``None`` if no such env is here."""
        return self._slots.status(env_id)

    def handle(self, frames: Sequence[Frame]) -> list[Frame] | Pending:
        """Answer one request (frames without the route). Never raises.

        Frames that do not decode get an ``ERROR`` named after the :class:`ProtocolError` subclass;
        an env's failure is reported in its row of the ``REPLY``, never for the whole batch. A
        reply is built under this worker's limits: a structured env whose row would take it over
        them gets an error row instead, and a reply over them even so (or an array env's) is a
        ``MessageTooLarge`` ``ERROR``, never frames the broker would refuse. A reset or step with
        calls to run off this thread is :class:`Pending`: run its calls, then :meth:`finish` it.
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
        return _answering(request, handler)

    def refuse(self, frames: Sequence[Frame], reason: str) -> list[Frame]:
        """The answer to a request this worker does not serve (it is not registered): an
        ``ERROR`` saying each of its env ids failed with ``WorkerLost`` for ``reason``. Nothing is
        run and only frame 0 is decoded. Never raises."""
        try:
            request = decode_header(frames, self._limits)
        except ProtocolError:
            request_id, env_ids = readable_request_id(frames, self._limits), None
        else:
            request_id, env_ids = request.request_id, request.env_ids
        return encode(error_message(request_id, WorkerLost.__name__, reason, env_ids))

    def finish(self, pending: Pending) -> list[Frame]:
        """The reply to a :class:`Pending` request whose calls have all run. Never raises."""
        return _answering(pending.request, lambda request: pending.reply(request, self._limits))

    def drop_all(self) -> None:
        """Close and forget every env instance. An env whose ``close()`` raises is forgotten too."""
        structured, failed = self._slots.drop_all()
        failed += self._vector.drop_all()
        if failed:
            log.warning("%d of %d env(s) raised in close() while dropping all", failed, structured)

    def _select(self, request: Message) -> Selection:
        """Locate the request's env ids, once: in the vector table if any is there, else in the
        structured one. Raises :class:`ProtocolError` for a request mixing the two."""
        env_ids = request_ids(request)
        vector = self._vector.select(env_ids)
        if vector is None:
            return self._slots.select(env_ids)
        if not vector.whole and self._slots.taken(env_ids.tolist()):
            raise ProtocolError(f"{request.op.name} mixes array and structured envs")
        return vector

    def _create(self, request: Message) -> list[Frame]:
        name = request.meta["env"]
        kind = self._kinds.get(name)
        if kind is None:
            raise EnvNotFound(f"this worker hosts {', '.join(self._kinds)}; not {name!r}")
        kwargs: dict[str, Any] = request.meta.get("kwargs", {})
        autoreset = AutoresetMode(request.meta.get("autoreset", AutoresetMode.DISABLED))
        ids = request_ids(request)
        env_ids: list[int] = ids.tolist()
        meta: dict[str, Any] = {}
        errors: list[ErrorRow] = []
        taken = self._slots.taken(env_ids) + ids[self._vector.owns(ids)].tolist()
        if taken or self.slots_used + len(env_ids) > self._capacity:
            reason = (
                f"env id(s) {taken[:10]} already exist"
                if taken
                else f"worker is full (capacity {self._capacity}, {self.slots_used} used)"
            )
            errors = [error_row(env_id, "EnvExecutionError", reason) for env_id in env_ids]
        elif kind.vector:
            try:
                host = self._vector.create(kind.cls, name, ids, kwargs, autoreset)
            except Exception as exc:
                errors = [exception_row(env_id, exc) for env_id in env_ids]
            else:
                meta["spaces"] = {
                    "action": space_to_wire(host.env.action_space),
                    "observation": space_to_wire(host.env.observation_space),
                }
        else:
            concurrency = request.meta.get("concurrency", kind.concurrency)
            timeout_s = request.meta.get("timeout_s")
            runtime = Runtime(kind, kwargs, autoreset, concurrency, timeout_s)
            errors = self._slots.create(runtime, env_ids)
        return reply_frames(request, {"errors": errors}, meta, self._limits)

    def _reset(self, request: Message) -> list[Frame] | Pending:
        n = len(request_ids(request))
        seeds = _per_env_part(request, "seeds", n)
        kwargs = _per_env_part(request, "kwargs", n)
        if seeds is not None and not all(s is None or type(s) is int for s in seeds):
            raise ProtocolError("RESET seeds must each be an int or None")
        if kwargs is not None and not all(
            type(kw) is dict and all(type(k) is str for k in kw) for kw in kwargs
        ):
            raise ProtocolError("RESET kwargs must each be a map with string keys")
        return self._answer(request, self._select(request).reset(seeds, kwargs))

    def _step(self, request: Message) -> list[Frame] | Pending:
        actions = request.parts.get("actions")
        if actions is None:
            raise ProtocolError("STEP needs an 'actions' part")
        if not isinstance(actions, list | np.ndarray):
            raise ProtocolError("STEP actions must be a list or an array, one per env id")
        n = len(request_ids(request))
        if len(actions) != n:
            raise ProtocolError(
                f"STEP has {len(actions)} actions for {n} env id(s); they must match"
            )
        timeout_s: float | None = request.meta.get("timeout_s")
        return self._answer(request, self._select(request).step(actions, timeout_s))

    def _state(self, request: Message) -> list[Frame]:
        return self._select(request).state().encode(request, self._limits)

    def _close(self, request: Message) -> list[Frame]:
        return self._select(request).close().encode(request, self._limits)

    def _answer(self, request: Message, reply: Reply) -> list[Frame] | Pending:
        if isinstance(reply, Deferred):
            return Pending(request, reply)
        return reply.encode(request, self._limits)


@dataclass(slots=True, eq=False)
class Pending:
    """A request waiting for calls that run off the worker's thread (:attr:`calls`)."""

    request: Message
    deferred: Deferred

    @property
    def calls(self) -> list[Call]:
        return self.deferred.calls

    def reply(self, request: Message, limits: Limits) -> list[Frame]:
        return self.deferred.encode(request, limits)


Answer = TypeVar("Answer", list[Frame], list[Frame] | Pending)


def _answering(request: Message, answer: Callable[[Message], Answer]) -> Answer | list[Frame]:
    """``answer(request)``, or the ``ERROR`` reply for what it raised."""
    try:
        return answer(request)
    except OpenEnvZmqError as exc:
        return encode(error_message(request.request_id, type(exc).__name__, str(exc)))
    except Exception as exc:
        # A bug here must cost one request, not the worker and every env on it.
        log.exception("%s request %d failed", request.op.name, request.request_id)
        return encode(
            error_message(
                request.request_id, type(exc).__name__, str(exc), traceback=traceback.format_exc()
            )
        )


def request_ids(request: Message) -> EnvIds:
    """The env ids of a worker op as an array (the codec guarantees they are there)."""
    ids = request.env_ids
    if ids is None:
        raise ProtocolError(f"{request.op.name} needs env ids")
    return ids


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
