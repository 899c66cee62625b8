"""Split a batch by worker and join the workers' answers back in the caller's order. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from openenv_zmq.batch_models import validate_many
from openenv_zmq.client.results import BatchResult
from openenv_zmq.errors import (
    EnvError,
    EnvIdsNotInGroup,
    ProtocolError,
    env_error_from_wire,
    error_from_wire,
    is_env_error_name,
)
from openenv_zmq.protocol import EnvIds, Message, Op

Positions = npt.NDArray[np.intp]
FEW_IDS = 16
"""Up to this many env ids, plain Python beats numpy's fixed cost per call."""


@dataclass
class Placement:
    """Which worker hosts each env id of a group. ``env_ids`` is kept sorted."""

    env_ids: EnvIds
    workers: npt.NDArray[np.int64]
    _row_of: dict[int, int] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, env_ids: EnvIds, workers: npt.NDArray[np.int64]) -> Placement:
        order = np.argsort(env_ids, kind="stable")
        ids = env_ids[order].astype(np.int64)
        ids.setflags(write=False)  # the rows of _row_of: they never change
        return cls(ids, workers[order].astype(np.int64))

    def locate(self, env_ids: EnvIds) -> npt.NDArray[np.int64]:
        """The worker of each env id; raises :class:`EnvIdsNotInGroup` for ids not in the group."""
        if len(env_ids) <= FEW_IDS:
            # A session's own env, a handful of slots: a dict beats numpy's fixed costs.
            rows = self._rows()
            try:
                found = [rows[i] for i in env_ids.tolist()]
            except KeyError:
                pass  # the general path names every unknown id
            else:
                return self.workers[found]
        index = np.searchsorted(self.env_ids, env_ids)
        index[index >= len(self.env_ids)] = 0
        unknown = self.env_ids[index] != env_ids if len(self.env_ids) else np.ones_like(env_ids)
        if np.any(unknown):
            bad = np.asarray(env_ids)[np.asarray(unknown, dtype=bool)]
            raise EnvIdsNotInGroup(f"env ids not in this group: {bad[:10].tolist()}")
        return self.workers[index]

    def _rows(self) -> dict[int, int]:
        """Each env id's row in :attr:`env_ids` (which never change), built on first use."""
        if self._row_of is None:
            self._row_of = {env_id: row for row, env_id in enumerate(self.env_ids.tolist())}
        return self._row_of

    def move(self, env_ids: EnvIds, workers: npt.NDArray[np.int64]) -> None:
        """Record that ``env_ids`` now live on ``workers`` (after a re-placement)."""
        self.workers[np.searchsorted(self.env_ids, env_ids)] = workers


@dataclass(frozen=True)
class SubBatch:
    """The part of a request that goes to one worker."""

    worker: int
    env_ids: EnvIds
    positions: Positions
    """Where these env ids sit in the caller's request."""


@dataclass(frozen=True)
class Targets:
    """The env ids a call names and the worker of each, located once per call."""

    env_ids: EnvIds
    workers: npt.NDArray[np.int64]

    def split(self) -> list[SubBatch]:
        return split_by_worker(self.env_ids, self.workers)

    def __len__(self) -> int:
        return len(self.env_ids)


def split_by_worker(env_ids: EnvIds, workers: npt.NDArray[np.int64]) -> list[SubBatch]:
    """Group a request's env ids by worker, keeping each group in request order."""
    n = len(workers)
    if n == 0:
        return []
    first = workers[0]
    if n == 1 or not (workers != first).any():  # one worker: the usual small batch
        return [SubBatch(int(first), env_ids, np.arange(n))]
    order = np.argsort(workers, kind="stable")
    sorted_workers = workers[order]
    bounds = (np.flatnonzero(np.diff(sorted_workers)) + 1).tolist()
    return [
        SubBatch(int(sorted_workers[s]), env_ids[order[s:e]], order[s:e])
        for s, e in zip([0, *bounds], [*bounds, n], strict=True)
    ]


def in_order(positions: Positions, n: int) -> bool:
    """Whether ``positions`` are ``0 .. n-1`` in order: the rows need not move."""
    if len(positions) != n:
        return False
    if n <= FEW_IDS:
        return bool(positions.tolist() == list(range(n)))
    return bool((positions == np.arange(n)).all())


def take(values: Any, positions: Positions) -> Any:
    """``values`` at ``positions``: an array stays an array (itself when nothing moves)."""
    if isinstance(values, np.ndarray):
        return values if in_order(positions, len(values)) else values[positions]
    return [values[i] for i in positions.tolist()]


def raise_if_error(message: Message) -> None:
    """Raise the typed error of a whole-request ``ERROR`` that is not a per-env failure."""
    if message.op is Op.ERROR and (
        message.env_ids is None or not is_env_error_name(message.meta["type"])
    ):
        raise error_from_wire(
            message.meta["type"], message.meta["message"], message.meta.get("traceback", "")
        )
    if message.op not in (Op.ERROR, Op.REPLY):
        raise ProtocolError(f"expected an answer, got {message.op.name}")


def env_errors(message: Message) -> dict[int, EnvError]:
    """The per-env errors of an answer: its ``errors`` part, or every env of a per-env ``ERROR``."""
    if message.op is Op.ERROR:
        assert message.env_ids is not None
        meta = message.meta
        return {
            env_id: env_error_from_wire(
                meta["type"], meta["message"], meta.get("traceback", ""), env_id
            )
            for env_id in message.env_ids.tolist()
        }
    rows = message.parts.get("errors", [])
    if type(rows) is not list:
        raise ProtocolError("an answer's 'errors' part must be a list of error rows")
    errors: dict[int, EnvError] = {}
    for row in rows:
        if not _is_error_row(row):
            raise ProtocolError(
                f"malformed error row {row!r:.200}: expected [env_id, type, message, traceback]"
                " and an optional map of details"
            )
        env_id, type_name, text, traceback, *details = row
        errors[env_id] = env_error_from_wire(
            type_name, text, traceback, env_id, details[0] if details else None
        )
    return errors


def _is_error_row(row: Any) -> bool:
    return (
        type(row) is list
        and len(row) in (4, 5)
        and type(row[0]) is int
        and all(type(field) is str for field in row[1:4])
        and (len(row) == 4 or type(row[4]) is dict)
    )


@dataclass(frozen=True)
class EnvModels:
    """The models a client builds an env's rows into, found from the env it asked for itself
    (``client.state.local_models``), never from a module a worker names. ``None``: dicts."""

    observation: type[BaseModel] | None = None
    state: type[BaseModel] | None = None
    known: Mapping[str, type[BaseModel]] = field(default_factory=dict)
    """The env's other models by ``module:qualname``: a row a worker says is of one of these
    classes (``row_types``) is built as it; a row of a class not here stays a dict."""


def build_models(
    rows: list[Any],
    model: type[BaseModel] | None,
    row_types: list[Any] | None = None,
    known: Mapping[str, type[BaseModel]] | None = None,
) -> list[Any]:
    """Turn decoded dicts back into the env's models (``None`` rows stay ``None``).

    ``row_types`` names the class of the rows that are not ``model`` (a reply's ``row_types``
    part); such a row is built as that class if it is in ``known``, else left a dict.
    """
    if row_types is None:
        return _build(rows, model)
    if type(row_types) is not list or len(row_types) != len(rows):
        raise ProtocolError("row_types must name one class (or None) per row")
    out = list(rows)
    by_class: dict[type[BaseModel] | None, list[int]] = {}
    for i, path in enumerate(row_types):
        cls = model if path is None else (known or {}).get(path) if type(path) is str else None
        by_class.setdefault(cls, []).append(i)
    for cls, positions in by_class.items():
        for i, built in zip(positions, _build([rows[i] for i in positions], cls), strict=True):
            out[i] = built
    return out


def _build(rows: list[Any], model: type[BaseModel] | None) -> list[Any]:
    if model is None:
        return rows
    present = [row for row in rows if row is not None]
    batch = validate_many(model, present)
    if batch is None:  # let the failing row raise its own ValidationError
        batch = [model.model_validate(row) for row in present]
    built = iter(batch)
    return [None if row is None else next(built) for row in rows]


@dataclass(frozen=True)
class ArrayLayout:
    """Observations of an array env: one ``dtype`` row of ``shape`` per env."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    @classmethod
    def from_wire(cls, spec: dict[str, Any]) -> ArrayLayout:
        return cls(np.dtype(spec["dtype"]), tuple(spec["shape"]))

    def blank(self, n: int) -> npt.NDArray[Any]:
        return np.zeros((n, *self.shape), self.dtype)


def blank_rows(layout: ArrayLayout | None, n: int) -> Any:
    """``n`` empty observation rows: zeros for an array env, ``None`` for a structured one."""
    return [None] * n if layout is None else layout.blank(n)


def place_rows(out: Any, positions: Positions, rows: Any) -> None:
    """Write ``rows`` into ``out`` (an array or a list) at ``positions``."""
    if isinstance(out, np.ndarray):
        out[positions] = rows
        return
    for position, row in zip(positions.tolist(), rows, strict=True):
        out[position] = row


def sub_result(
    message: Message,
    sub: SubBatch,
    models: EnvModels,
    layout: ArrayLayout | None = None,
) -> BatchResult:
    """Read a worker's answer to a reset/step sub-batch, as the sub-batch's BatchResult."""
    raise_if_error(message)
    n = len(sub.env_ids)
    errors = env_errors(message)
    if message.op is Op.ERROR:
        return BatchResult(
            sub.env_ids,
            blank_rows(layout, n),
            np.zeros(n, np.float32),
            np.zeros(n, bool),
            np.zeros(n, bool),
            errors,
        )
    parts = message.parts
    if message.env_ids is None or not _same_ids(message.env_ids, sub.env_ids):
        raise ProtocolError("answer names other env ids than its request")
    final = parts.get("final_obs")
    if isinstance(final, list):
        final = build_models(final, models.observation, parts.get("final_row_types"), models.known)
    obs = parts["obs"]
    return BatchResult(
        sub.env_ids,
        obs
        if isinstance(obs, np.ndarray)
        else build_models(obs, models.observation, parts.get("row_types"), models.known),
        parts["rew"],
        parts["term"],
        parts["trunc"],
        errors,
        final,
    )


def _same_ids(answered: EnvIds, asked: EnvIds) -> bool:
    # Both int64 as a rule: comparing their bytes skips array_equal's temporaries.
    if answered.dtype == asked.dtype:
        return len(answered) == len(asked) and answered.tobytes() == asked.tobytes()
    return bool(np.array_equal(answered, asked))


def assemble(
    env_ids: EnvIds,
    pieces: Sequence[tuple[Positions, BatchResult]],
    layout: ArrayLayout | None = None,
) -> BatchResult:
    """Join sub-results into one BatchResult; row ``positions[i]`` is the sub-result's row i.

    One sub-result that covers the request in order (one worker's answer) is returned as it is,
    with the request's env ids: its arrays are then views of the received frames (writable, as
    received zmq frames are).
    """
    n = len(env_ids)
    if len(pieces) == 1 and in_order(pieces[0][0], n):
        return _as_request(env_ids, pieces[0][1], layout)
    observations = blank_rows(layout, n)
    final = None
    rewards = np.zeros(n, np.float32)
    terminated = np.zeros(n, np.bool_)
    truncated = np.zeros(n, np.bool_)
    errors: dict[int, EnvError] = {}
    for positions, part in pieces:
        rewards[positions] = part.rewards
        terminated[positions] = part.terminated
        truncated[positions] = part.truncated
        place_rows(observations, positions, part.observations)
        if part.final_observations is not None:
            if final is None:
                final = blank_rows(layout, n)
            place_rows(final, positions, part.final_observations)
        errors.update(part.errors)
    return BatchResult(
        np.array(env_ids, np.int64), observations, rewards, terminated, truncated, errors, final
    )


def _as_request(env_ids: EnvIds, part: BatchResult, layout: ArrayLayout | None) -> BatchResult:
    """``part`` as the answer to a request for ``env_ids``, with the dtypes ``assemble`` gives."""
    observations, final = part.observations, part.final_observations
    if layout is not None:
        observations = np.asarray(observations, layout.dtype)
        if final is not None:
            final = np.asarray(final, layout.dtype)
    return BatchResult(
        np.array(env_ids, np.int64),  # the caller's own: never the group's or the request's
        observations,
        np.asarray(part.rewards, np.float32),
        np.asarray(part.terminated, np.bool_),
        np.asarray(part.truncated, np.bool_),
        part.errors,
        final,
    )
