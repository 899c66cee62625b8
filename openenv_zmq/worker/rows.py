"""The rows of a worker's replies, one per env id of the request, and its per-env error rows.

Both kinds of env answer in the same vocabulary. A RESET / STEP reply carries ``obs``, ``rew``,
``term``, ``trunc``, ``errors`` and, after a same-step autoreset, ``final_obs``; a STATE reply
``states`` and ``errors``; a CREATE / CLOSE reply ``errors``. A failed env's row holds zeros and
its error row ``[env_id, type name, message, traceback]`` is in ``errors``, optionally followed by
a map of details (pydantic's error list for a refused action).

A reply is encoded under the worker's limits. Structured rows that would take it over them are
failed one by one, largest first (:meth:`ModelRows.encode`); a reply that does not fit even so,
and an array reply, is refused whole with :class:`MessageTooLarge`.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ValidationError

from openenv_zmq.batch_models import dump_many
from openenv_zmq.errors import MessageTooLarge, ProtocolError
from openenv_zmq.protocol import EnvIds, Frame, Limits, Message, Op, encode, pack
from openenv_zmq.registry import type_path
from openenv_zmq.spaces import Space, batch_shape

ErrorRow = list[Any]
"""``[env_id, type name, message, traceback]`` (+ details), one per failed env in ``errors``."""

RowNumbers = npt.NDArray[np.intp]
"""Positions in a request's env ids."""

NEEDS_RESET = ("NeedsReset", "call reset() before step()")
"""Type name and message for a step of an env that was never reset (or whose reset raised)."""


def error_row(env_id: int, type_name: str, message: str, trace: str = "") -> ErrorRow:
    return [env_id, type_name, message, trace]


def exception_row(env_id: int, exc: BaseException) -> ErrorRow:
    """An error row for ``exc``, with its traceback (it may have been raised on another
    thread)."""
    return [env_id, type(exc).__name__, str(exc), "".join(traceback.format_exception(exc))]


def not_on_worker_row(env_id: int) -> ErrorRow:
    return [env_id, "EnvNotOnWorker", f"this worker hosts no env with id {env_id}", ""]


def action_validation_row(env_id: int, exc: ValidationError) -> ErrorRow:
    """A refused action; pydantic's error list travels too, for OpenEnv's VALIDATION_ERROR."""
    return [env_id, "ActionValidationError", str(exc), "", {"errors": json.loads(exc.json())}]


def error_rows(
    env_ids: EnvIds, rows: RowNumbers, type_name: str, message: str, trace: str = ""
) -> list[ErrorRow]:
    """The same error for each env at ``rows`` of the request."""
    return [[int(env_ids[r]), type_name, message, trace] for r in rows.tolist()]


def exception_rows(env_ids: EnvIds, rows: RowNumbers, exc: BaseException) -> list[ErrorRow]:
    """``exc`` for each env at ``rows`` (one call failed them all)."""
    trace = "".join(traceback.format_exception(exc))
    return error_rows(env_ids, rows, type(exc).__name__, str(exc), trace)


def reply_frames(
    request: Message,
    parts: dict[str, Any],
    meta: dict[str, Any] | None = None,
    limits: Limits | None = None,
) -> list[Frame]:
    """The ``REPLY`` to ``request``. Raises :class:`ProtocolError` if a part cannot be encoded,
    and :class:`MessageTooLarge` if the reply is over ``limits`` (when given)."""
    message = Message(
        Op.REPLY, request.request_id, env_ids=request.env_ids, meta=meta or {}, parts=parts
    )
    return encode(message, limits)


class Reply(Protocol):
    """What a slot table answers a request with; the request's frames are built last.

    :meth:`encode` raises :class:`MessageTooLarge` when the reply cannot be brought under
    ``limits`` (when given), which fails the whole request.
    """

    def encode(self, request: Message, limits: Limits | None = None) -> list[Frame]: ...


@dataclass(slots=True)
class PartsReply:
    """A reply whose parts are final as they are."""

    parts: dict[str, Any]

    def encode(self, request: Message, limits: Limits | None = None) -> list[Frame]:
        return reply_frames(request, self.parts, limits=limits)


class ModelRows:
    """The rows of a RESET / STEP (``obs``) or STATE (``states``) reply of structured envs.

    Rows start zeroed, which is what a failed env's row must hold; a row is filled only once
    everything about it has been computed, so a failure half-way leaves it zeroed. Models are
    dumped in :meth:`encode`, in one pydantic call.
    """

    def __init__(
        self,
        env_ids: list[int],
        part: str,
        errors: list[ErrorRow],
        declared: type[BaseModel] | None = None,
    ) -> None:
        n = len(env_ids)
        self.env_ids = env_ids
        self.part = part
        self.declared = declared
        """The model the env declares for these rows: rows of another class are named in
        ``row_types`` for the client."""
        self.values: list[Any] = [None] * n
        self.final: list[Any] | None = None
        """Final observations of episodes that ended and were reset in this same step."""
        # Plain lists while filling: a numpy item assignment per env costs ten times more.
        self.rewards = [0.0] * n
        self.terminated = [False] * n
        self.errors = errors

    def put_observation(self, i: int, obs: Any) -> bool:
        """Fill row ``i`` from an observation model; returns its ``done``."""
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
        if self.final is not None:
            self.final[i] = None
        self.rewards[i] = 0.0
        self.terminated[i] = False

    def _parts(
        self,
        values: list[Any],
        final: list[Any] | None,
        row_types: list[Any] | None,
        final_types: list[Any] | None,
    ) -> dict[str, Any]:
        parts: dict[str, Any] = {self.part: values}
        if row_types is not None:
            parts["row_types"] = row_types
        if final_types is not None:
            parts["final_row_types"] = final_types
        if self.part == "obs":
            parts["rew"] = np.array(self.rewards, dtype=np.float32)
            parts["term"] = np.array(self.terminated, dtype=np.bool_)
            parts["trunc"] = np.zeros(len(values), dtype=np.bool_)
        if final is not None:
            parts["final_obs"] = final
        parts["errors"] = self.errors
        return parts

    def _row_types(self, models: list[Any]) -> list[str | None] | None:
        """Each row's class as ``module:qualname`` when some row is not of the declared class
        (an env that declares none, an MCP env's tool results); ``None`` when all are."""
        classes = {type(m) for m in models}
        classes.discard(type(None))
        if not classes or classes == {self.declared}:
            return None
        paths = {cls: type_path(cls) for cls in classes if cls is not self.declared}
        return [paths.get(type(m)) for m in models]

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
                self.errors.append(exception_row(self.env_ids[i], exc))
        return out

    def encode(self, request: Message, limits: Limits | None = None) -> list[Frame]:
        """Dump the models and build the reply. Call once, after every row is filled.

        A row msgpack cannot carry fails its env alone; so do the largest rows, one by one, when
        the reply is over ``limits``, until the rest fit. A failed row's slot stays as its call
        left it: the env did reset or step and answers on, only this answer of it is lost.
        Raises :class:`MessageTooLarge` if the reply is over ``limits`` even with every row
        failed.
        """
        row_types = self._row_types(self.values)
        final_types = None if self.final is None else self._row_types(self.final)
        self.values = self._dump(self.values)
        if self.final is not None:
            self.final = self._dump(self.final)
        try:
            return reply_frames(
                request, self._parts(self.values, self.final, row_types, final_types), limits=limits
            )
        except ProtocolError:
            # Over the limits (MessageTooLarge) or a value msgpack cannot carry: either way, fail
            # the envs at fault, not the batch. Only this rare path pays for packing row by row.
            pass
        sizes = self._row_sizes()
        if limits is not None:
            self._fail_largest(request, sizes, limits.max_message_bytes, row_types, final_types)
        parts = self._parts(self.values, self.final, row_types, final_types)
        try:
            return reply_frames(request, parts, limits=limits)
        except MessageTooLarge as exc:
            raise MessageTooLarge(
                f"the reply to {len(self.values)} env(s) is over the limit even with every row "
                f"failed: {exc}"
            ) from exc

    def _row_sizes(self) -> dict[int, int]:
        """The packed size of each filled row (its value and final value, by position); a row
        msgpack cannot carry fails its env instead."""
        sizes: dict[int, int] = {}
        for i, value in enumerate(self.values):
            final = None if self.final is None else self.final[i]
            if value is None and final is None:
                continue
            try:
                sizes[i] = len(pack(value)) + len(pack(final))
            except ProtocolError as exc:
                self.clear(i)
                self.errors.append(error_row(self.env_ids[i], "EnvExecutionError", str(exc)))
        return sizes

    def _fail_largest(
        self,
        request: Message,
        sizes: dict[int, int],
        limit: int,
        row_types: list[Any] | None,
        final_types: list[Any] | None,
    ) -> None:
        """Fail the largest of the rows measured in ``sizes`` until the reply fits under
        ``limit`` by an estimate that never falls short: the reply with every one of them
        emptied, plus those kept, plus the error rows added."""
        n = len(self.values)
        emptied = [None] * n
        parts = self._parts(
            emptied, None if self.final is None else emptied, row_types, final_types
        )
        estimate = sum(memoryview(frame).nbytes for frame in reply_frames(request, parts))
        estimate += sum(sizes.values()) + _ARRAY_HEADER_GROWTH
        noun = "state" if self.part == "states" else "observation"
        for i in sorted(sizes, key=sizes.__getitem__, reverse=True):
            if estimate <= limit:
                return
            both = self.final is not None and self.final[i] is not None
            what = "observation and final observation" if both else noun
            message = (
                f"its {what} of {sizes[i]} bytes does not fit a reply under the limit of {limit}"
            )
            row = error_row(self.env_ids[i], "EnvExecutionError", message)
            self.clear(i)
            self.errors.append(row)
            estimate += len(pack(row)) - sizes[i]


_ARRAY_HEADER_GROWTH = 4
"""The most a msgpack array header grows by as items are added (1 byte up to 5): the errors
list's, as error rows replace rows."""


class ArrayRows:
    """The rows of a RESET / STEP reply of vector envs: one array per part, filled host by host.

    Every row of an array is the same size, so failing some rows would not make the reply
    smaller: a reply over the limits is refused whole (:meth:`encode` raises
    :class:`MessageTooLarge`).
    """

    def __init__(self, env_ids: EnvIds, observation_space: Space, errors: list[ErrorRow]) -> None:
        n = len(env_ids)
        self.env_ids = env_ids
        self.obs = np.zeros(batch_shape(observation_space, n), observation_space.dtype)
        self.final_obs: npt.NDArray[Any] | None = None
        """Final observations of episodes that ended and were reset in this same step."""
        self.rewards = np.zeros(n, np.float32)
        self.terminated = np.zeros(n, np.bool_)
        self.truncated = np.zeros(n, np.bool_)
        self.errors = errors

    def fail(self, rows: RowNumbers, type_name: str, message: str) -> None:
        self.errors += error_rows(self.env_ids, rows, type_name, message)

    def encode(self, request: Message, limits: Limits | None = None) -> list[Frame]:
        parts: dict[str, Any] = {
            "obs": self.obs,
            "rew": self.rewards,
            "term": self.terminated,
            "trunc": self.truncated,
            "errors": self.errors,
        }
        if self.final_obs is not None:
            parts["final_obs"] = self.final_obs
        return reply_frames(request, parts, limits=limits)
