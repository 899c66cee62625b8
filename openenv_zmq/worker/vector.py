"""Env ids hosted by ``VectorEnvironment`` objects: the array fast path, sans I/O.

Everything here works on whole arrays: locating env ids, checking actions against the action
space, scattering each vector env's answer into the reply, autoreset. No Python loop runs per env
on a step unless that env failed.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.env import VectorEnvironment
from openenv_zmq.errors import ProtocolError
from openenv_zmq.protocol import EnvIds
from openenv_zmq.spaces import Space, batch_shape

ErrorRow = list[Any]
Rows = npt.NDArray[np.intp]

NEEDS_RESET, RUNNING, DONE, CLOSED = 0, 1, 2, 3
"""Slot status codes, one uint8 per index (the same lifecycle as a structured env's slot)."""


def space_meta(space: Space) -> dict[str, Any]:
    """How a client should shape and type arrays of ``space``."""
    return {"dtype": space.dtype.str, "shape": list(space.shape)}


@dataclass(eq=False)
class VectorHost:
    """One vector env object and the env ids it hosts, index ``i`` being ``env_ids[i]``."""

    env: VectorEnvironment
    name: str
    autoreset: AutoresetMode
    env_ids: EnvIds
    status: npt.NDArray[np.uint8]

    @property
    def live(self) -> int:
        return int(np.count_nonzero(self.status != CLOSED))


class Reply:
    """The rows of a RESET / STEP answer for ``n`` env ids, filled host by host."""

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

    def fail(self, rows: Rows, type_name: str, message: str, trace: str = "") -> None:
        self.errors += error_rows(self.env_ids, rows, type_name, message, trace)

    def parts(self) -> dict[str, Any]:
        parts: dict[str, Any] = {
            "obs": self.obs,
            "rew": self.rewards,
            "term": self.terminated,
            "trunc": self.truncated,
            "errors": self.errors,
        }
        if self.final_obs is not None:
            parts["final_obs"] = self.final_obs
        return parts


class VectorTable:
    """All vector-hosted env ids of a worker, located with one ``searchsorted`` per request."""

    def __init__(self) -> None:
        self._hosts: list[VectorHost] = []
        self._ids = np.empty(0, np.int64)
        self._host_of = np.empty(0, np.intp)
        self._index_of = np.empty(0, np.intp)

    def __len__(self) -> int:
        return len(self._ids)

    def _reindex(self) -> None:
        self._hosts = [h for h in self._hosts if h.live]
        if not self._hosts:
            self._ids = np.empty(0, np.int64)
            self._host_of = self._index_of = np.empty(0, np.intp)
            return
        ids, hosts, indices = [], [], []
        for number, host in enumerate(self._hosts):
            open_ = np.flatnonzero(host.status != CLOSED)
            ids.append(host.env_ids[open_])
            hosts.append(np.full(len(open_), number, np.intp))
            indices.append(open_)
        all_ids = np.concatenate(ids)
        order = np.argsort(all_ids, kind="stable")
        self._ids = all_ids[order]
        self._host_of = np.concatenate(hosts)[order]
        self._index_of = np.concatenate(indices)[order]

    def _positions(self, env_ids: EnvIds) -> tuple[npt.NDArray[np.bool_], Rows]:
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

    def _locate(self, env_ids: EnvIds) -> tuple[npt.NDArray[np.bool_], Rows, Rows]:
        found, at = self._positions(env_ids)
        return found, self._host_of[at], self._index_of[at]

    def _by_host(
        self, env_ids: EnvIds, errors: list[ErrorRow]
    ) -> list[tuple[VectorHost, Rows, Rows]]:
        """Group the request's rows by host; unknown env ids get a row in ``errors``."""
        found, hosts, indices = self._locate(env_ids)
        if not found.all():
            errors += error_rows(env_ids, np.flatnonzero(~found), *UNKNOWN)
        if len(self._hosts) == 1 and found.all():
            return [(self._hosts[0], np.arange(len(env_ids)), indices)]
        groups = []
        for number in np.unique(hosts[found]).tolist():
            rows = np.flatnonzero(found & (hosts == number))
            groups.append((self._hosts[number], rows, indices[rows]))
        return groups

    def _start_reply(self, env_ids: EnvIds) -> tuple[Reply, list[tuple[VectorHost, Rows, Rows]]]:
        """An empty reply shaped by the first host's observation space, and the host groups."""
        errors: list[ErrorRow] = []
        groups = self._by_host(env_ids, errors)
        if not groups:
            raise ProtocolError("none of these env ids is hosted by a vector env here")
        return Reply(env_ids, groups[0][0].env.observation_space, errors), groups

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
        host = VectorHost(
            env, name, autoreset, env_ids.copy(), np.full(len(env_ids), NEEDS_RESET, np.uint8)
        )
        self._hosts.append(host)
        self._reindex()
        return host

    def reset(self, env_ids: EnvIds, seeds: list[Any] | None) -> Reply:
        reply, groups = self._start_reply(env_ids)
        for host, rows, indices in groups:
            host_seeds = [None] * len(rows) if seeds is None else [seeds[r] for r in rows.tolist()]
            try:
                reply.obs[rows] = host.env.reset(indices, host_seeds)
            except Exception as exc:
                reply.errors += exception_rows(env_ids, rows, exc)
                host.status[indices] = NEEDS_RESET
                continue
            host.status[indices] = RUNNING
        return reply

    def step(self, env_ids: EnvIds, actions: Any) -> Reply:
        reply, groups = self._start_reply(env_ids)
        for host, rows, indices in groups:
            chosen = _actions(actions, rows, host.env.action_space, reply)
            if chosen is None:
                continue
            rows, indices, acts = _valid_rows(host, rows, indices, chosen, reply)
            try:
                self._step_host(host, rows, indices, acts, reply)
            except Exception as exc:
                reply.errors += exception_rows(env_ids, rows, exc)
        return reply

    def _step_host(
        self, host: VectorHost, rows: Rows, indices: Rows, actions: Any, reply: Reply
    ) -> None:
        if host.autoreset is AutoresetMode.NEXT_STEP:
            ended = host.status[indices] == DONE
            if ended.any():
                # Gymnasium's next_step: this call resets them; reward 0, flags false.
                reply.obs[rows[ended]] = host.env.reset(indices[ended], [None] * int(ended.sum()))
                host.status[indices[ended]] = RUNNING
                rows, indices, actions = rows[~ended], indices[~ended], actions[~ended]
        if not len(rows):
            return
        obs, rewards, terminated, truncated = host.env.step(indices, actions)
        reply.obs[rows] = obs
        reply.rewards[rows] = rewards
        reply.terminated[rows] = terminated
        reply.truncated[rows] = truncated
        ended = np.asarray(terminated) | np.asarray(truncated)
        host.status[indices] = np.where(ended, DONE, RUNNING)
        if host.autoreset is AutoresetMode.SAME_STEP and ended.any():
            if reply.final_obs is None:
                reply.final_obs = np.zeros_like(reply.obs)
            reply.final_obs[rows[ended]] = obs[ended]
            reply.obs[rows[ended]] = host.env.reset(indices[ended], [None] * int(ended.sum()))
            host.status[indices[ended]] = RUNNING

    def state(self, env_ids: EnvIds) -> tuple[list[Any], list[ErrorRow]]:
        states: list[Any] = [None] * len(env_ids)
        errors: list[ErrorRow] = []
        for host, rows, indices in self._by_host(env_ids, errors):
            try:
                values = host.env.state(indices)
            except Exception as exc:
                errors += exception_rows(env_ids, rows, exc)
                continue
            for row, value in zip(rows.tolist(), values, strict=True):
                states[row] = value
        return states, errors

    def close(self, env_ids: EnvIds) -> list[ErrorRow]:
        """Close env ids; a vector env object is closed once all its indices are."""
        errors: list[ErrorRow] = []
        for host, rows, indices in self._by_host(env_ids, errors):
            host.status[indices] = CLOSED
            if not host.live:
                try:
                    host.env.close()
                except Exception as exc:
                    errors += exception_rows(env_ids, rows, exc)
        self._reindex()
        return errors

    def drop_all(self) -> int:
        """Close every vector env object; returns how many raised."""
        failed = 0
        for host in self._hosts:
            try:
                host.env.close()
            except Exception:
                failed += 1
        self._hosts = []
        self._reindex()
        return failed


UNKNOWN = ("EnvNotOnWorker", "this worker hosts no such env id")


def error_rows(
    env_ids: EnvIds, rows: Rows, type_name: str, message: str, trace: str = ""
) -> list[ErrorRow]:
    """The same error for each env at ``rows`` of the request."""
    return [[int(env_ids[r]), type_name, message, trace] for r in rows.tolist()]


def exception_rows(env_ids: EnvIds, rows: Rows, exc: BaseException) -> list[ErrorRow]:
    """The exception being handled, for each env at ``rows`` (one call failed them all)."""
    return error_rows(env_ids, rows, type(exc).__name__, str(exc), traceback.format_exc())


def _actions(actions: Any, rows: Rows, space: Space, reply: Reply) -> Any:
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
    host: VectorHost, rows: Rows, indices: Rows, actions: Any, reply: Reply
) -> tuple[Rows, Rows, Any]:
    """Drop (and fail) rows that were never reset or whose action is outside the space."""
    ok = host.status[indices] != NEEDS_RESET
    if not ok.all():
        reply.fail(rows[~ok], "NeedsReset", "call reset() before step()")
    inside = host.env.action_space.contains_batch(actions)
    bad = ok & ~inside
    if bad.any():
        reply.fail(rows[bad], "ActionValidationError", "action outside the env's action space")
    keep = ok & inside
    if keep.all():
        return rows, indices, actions
    return rows[keep], indices[keep], actions[keep]
