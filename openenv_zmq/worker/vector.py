"""Env ids hosted by ``VectorEnvironment`` objects: the array fast path, sans I/O.

Everything here works on whole arrays: locating env ids, checking actions against the action
space, scattering each vector env's answer into the reply, autoreset. No Python loop runs per env
on a step unless that env failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.env import VectorEnvironment
from openenv_zmq.errors import ProtocolError
from openenv_zmq.protocol import EnvIds
from openenv_zmq.spaces import Space
from openenv_zmq.worker.rows import (
    NEEDS_RESET,
    ArrayRows,
    ErrorRow,
    PartsReply,
    RowNumbers,
    exception_rows,
    not_on_worker_row,
)
from openenv_zmq.worker.status import SlotStatus, StatusArray, after_reset, settled_many


@dataclass(eq=False)
class VectorHost:
    """One vector env object and the env ids it hosts, index ``i`` being ``env_ids[i]``."""

    env: VectorEnvironment
    name: str
    autoreset: AutoresetMode
    env_ids: EnvIds
    status: StatusArray

    @property
    def live(self) -> int:
        return int(np.count_nonzero(self.status != SlotStatus.CLOSED))


Groups = list[tuple[VectorHost, RowNumbers, RowNumbers]]
"""``(host, rows of the request, indices in the host)`` for each host a request reaches."""


class VectorTable:
    """All vector-hosted env ids of a worker, located with one ``searchsorted`` per request."""

    def __init__(self) -> None:
        self._hosts: list[VectorHost] = []
        self._ids = np.empty(0, np.int64)
        self._host_of = np.empty(0, np.intp)
        self._index_of = np.empty(0, np.intp)

    def __len__(self) -> int:
        return len(self._ids)

    def reindex(self) -> None:
        """Rebuild the sorted table after indices were added or closed."""
        self._hosts = [h for h in self._hosts if h.live]
        if not self._hosts:
            self._ids = np.empty(0, np.int64)
            self._host_of = self._index_of = np.empty(0, np.intp)
            return
        ids, hosts, indices = [], [], []
        for number, host in enumerate(self._hosts):
            open_ = np.flatnonzero(host.status != SlotStatus.CLOSED)
            ids.append(host.env_ids[open_])
            hosts.append(np.full(len(open_), number, np.intp))
            indices.append(open_)
        all_ids = np.concatenate(ids)
        order = np.argsort(all_ids, kind="stable")
        self._ids = all_ids[order]
        self._host_of = np.concatenate(hosts)[order]
        self._index_of = np.concatenate(indices)[order]

    def _positions(self, env_ids: EnvIds) -> tuple[npt.NDArray[np.bool_], RowNumbers]:
        """Which of ``env_ids`` are hosted here, and where each sits in the sorted table."""
        size = len(self._ids)
        if not size:
            return np.zeros(len(env_ids), np.bool_), np.zeros(len(env_ids), np.intp)
        if self._ids[-1] - self._ids[0] + 1 == size:
            # The usual case, one run of consecutive ids: arithmetic instead of a search.
            at = env_ids - self._ids[0]
            found = (at >= 0) & (at < size)
            return found, np.where(found, at, 0)
        at = np.minimum(np.searchsorted(self._ids, env_ids), size - 1)
        return np.asarray(self._ids[at] == env_ids), at

    def owns(self, env_ids: EnvIds) -> npt.NDArray[np.bool_]:
        """Which of ``env_ids`` are hosted here."""
        return self._positions(env_ids)[0]

    def select(self, env_ids: EnvIds) -> VectorSelection | None:
        """The request's env ids located here and grouped by host; ``None`` when none of them
        is hosted here."""
        found, at = self._positions(env_ids)
        if not found.any():
            return None
        hosts, indices = self._host_of[at], self._index_of[at]
        if len(self._hosts) == 1 and found.all():
            groups = [(self._hosts[0], np.arange(len(env_ids)), indices)]
        else:
            groups = []
            for number in np.unique(hosts[found]).tolist():
                rows = np.flatnonzero(found & (hosts == number))
                groups.append((self._hosts[number], rows, indices[rows]))
        return VectorSelection(self, env_ids, found, groups)

    def create(
        self,
        cls: type[VectorEnvironment],
        name: str,
        env_ids: EnvIds,
        kwargs: dict[str, Any],
        autoreset: AutoresetMode,
    ) -> VectorHost:
        """One vector env object for all of ``env_ids``; its constructor's exception propagates."""
        env = cls(num_envs=len(env_ids), **kwargs)
        status = np.full(len(env_ids), SlotStatus.NEEDS_RESET, np.uint8)
        host = VectorHost(env, name, autoreset, env_ids.copy(), status)
        self._hosts.append(host)
        self.reindex()
        return host

    def drop_all(self) -> int:
        """Close every vector env object; returns how many raised."""
        failed = 0
        for host in self._hosts:
            try:
                host.env.close()
            except Exception:
                failed += 1
        self._hosts = []
        self.reindex()
        return failed


class VectorSelection:
    """The vector-hosted env ids of one request, from :meth:`VectorTable.select`; an env id not
    hosted here gets its error row.

    Answer the request with one call of :meth:`reset`, :meth:`step`, :meth:`state` or
    :meth:`close`, before the table changes.
    """

    def __init__(
        self,
        table: VectorTable,
        env_ids: EnvIds,
        found: npt.NDArray[np.bool_],
        groups: Groups,
    ) -> None:
        self._table = table
        self.env_ids = env_ids
        self.whole = bool(found.all())
        """Whether every env id of the request is hosted here."""
        self.errors: list[ErrorRow] = []
        if not self.whole:
            missing = env_ids[~found].tolist()
            self.errors = [not_on_worker_row(env_id) for env_id in missing]
        self.groups = groups

    def _rows(self) -> ArrayRows:
        """Empty rows shaped by the first host's observation space."""
        return ArrayRows(self.env_ids, self.groups[0][0].env.observation_space, self.errors)

    def reset(self, seeds: list[Any] | None, kwargs: list[Any] | None) -> ArrayRows:
        """``kwargs`` are not passed on: ``VectorEnvironment.reset`` takes indices and seeds."""
        reply = self._rows()
        for host, rows, indices in self.groups:
            host_seeds = [None] * len(rows) if seeds is None else [seeds[r] for r in rows.tolist()]
            try:
                reply.obs[rows] = host.env.reset(indices, host_seeds)
            except Exception as exc:
                reply.errors += exception_rows(self.env_ids, rows, exc)
                host.status[indices] = after_reset(raised=True)
                continue
            host.status[indices] = after_reset()
        return reply

    def step(self, actions: Any, timeout_s: float | None = None) -> ArrayRows:
        """Raises :class:`ProtocolError` if ``actions`` do not line up with the env ids.

        A vector env steps all its indices in one call on the worker's thread, so a step
        deadline (``timeout_s``) does not apply to it."""
        reply = self._rows()
        for host, rows, indices in self.groups:
            chosen = _actions(actions, rows, host.env.action_space, reply)
            if chosen is None:
                continue
            rows, indices, acts = _valid_rows(host, rows, indices, chosen, reply)
            try:
                _step_host(host, rows, indices, acts, reply)
            except Exception as exc:
                reply.errors += exception_rows(self.env_ids, rows, exc)
        return reply

    def state(self) -> PartsReply:
        states: list[Any] = [None] * len(self.env_ids)
        errors = self.errors
        for host, rows, indices in self.groups:
            try:
                values = host.env.state(indices)
            except Exception as exc:
                errors += exception_rows(self.env_ids, rows, exc)
                continue
            for row, value in zip(rows.tolist(), values, strict=True):
                states[row] = value
        return PartsReply({"states": states, "errors": errors})

    def close(self) -> PartsReply:
        """Close env ids; a vector env object is closed once all its indices are."""
        errors = self.errors
        for host, rows, indices in self.groups:
            host.status[indices] = SlotStatus.CLOSED
            if not host.live:
                try:
                    host.env.close()
                except Exception as exc:
                    errors += exception_rows(self.env_ids, rows, exc)
        self._table.reindex()
        return PartsReply({"errors": errors})


def _step_host(
    host: VectorHost, rows: RowNumbers, indices: RowNumbers, actions: Any, reply: ArrayRows
) -> None:
    if host.autoreset is AutoresetMode.NEXT_STEP:
        ended = host.status[indices] == SlotStatus.DONE
        if ended.any():
            # Gymnasium's next_step: this call resets them; reward 0, flags false.
            reply.obs[rows[ended]] = host.env.reset(indices[ended], [None] * int(ended.sum()))
            host.status[indices[ended]] = after_reset()
            rows, indices, actions = rows[~ended], indices[~ended], actions[~ended]
    if not len(rows):
        return
    obs, rewards, terminated, truncated = host.env.step(indices, actions)
    reply.obs[rows] = obs
    reply.rewards[rows] = rewards
    reply.terminated[rows] = terminated
    reply.truncated[rows] = truncated
    ended = np.asarray(terminated) | np.asarray(truncated)
    host.status[indices] = settled_many(ended)
    if host.autoreset is AutoresetMode.SAME_STEP and ended.any():
        if reply.final_obs is None:
            reply.final_obs = np.zeros_like(reply.obs)
        reply.final_obs[rows[ended]] = obs[ended]
        reply.obs[rows[ended]] = host.env.reset(indices[ended], [None] * int(ended.sum()))
        host.status[indices[ended]] = after_reset()


def _actions(actions: Any, rows: RowNumbers, space: Space, reply: ArrayRows) -> Any:
    """The actions of ``rows`` as an array of the action space's dtype, or ``None`` (failed)."""
    try:
        chosen = np.asarray(actions)[rows]
    except (IndexError, ValueError) as exc:
        raise ProtocolError(f"actions do not line up with the env ids: {exc}") from exc
    if chosen.shape[1:] != space.shape:
        reply.fail(
            rows,
            "ActionValidationError",
            f"actions have shape {list(chosen.shape[1:])}; the action space needs"
            f" {list(space.shape)}",
        )
        return None
    if not np.can_cast(chosen.dtype, space.dtype, "same_kind"):
        reply.fail(
            rows,
            "ActionValidationError",
            f"actions of dtype {chosen.dtype} do not fit the action space's {space.dtype}",
        )
        return None
    return chosen.astype(space.dtype, copy=False)


def _valid_rows(
    host: VectorHost, rows: RowNumbers, indices: RowNumbers, actions: Any, reply: ArrayRows
) -> tuple[RowNumbers, RowNumbers, Any]:
    """Drop (and fail) rows that were never reset or whose action is outside the space."""
    ok = host.status[indices] != SlotStatus.NEEDS_RESET
    if not ok.all():
        reply.fail(rows[~ok], *NEEDS_RESET)
    inside = host.env.action_space.contains_batch(actions)
    bad = ok & ~inside
    if bad.any():
        reply.fail(rows[bad], "ActionValidationError", "action outside the env's action space")
    keep = ok & inside
    if keep.all():
        return rows, indices, actions
    return rows[keep], indices[keep], actions[keep]
