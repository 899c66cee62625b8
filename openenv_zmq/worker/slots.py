"""Env ids hosted by structured envs, one ``Environment`` object per id, sans I/O.

Each env steps on its own, but the batch shares the costly parts: the actions of one request are
validated in one pydantic call and its observations dumped in another (:class:`ModelRows`).
CPU-bound sync envs step inline, one after the other, which is the fastest path there is; envs
that wait (async, blocking on I/O, or under a deadline) are handed out as calls to run
concurrently, and their replies settled when the calls are done (:class:`Deferred`).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.batch_models import validate_many
from openenv_zmq.errors import ProtocolError
from openenv_zmq.protocol import EnvIds, Frame, Limits, Message
from openenv_zmq.worker.calls import Call, Mode, grace
from openenv_zmq.worker.kinds import Runtime, Slot
from openenv_zmq.worker.rows import (
    NEEDS_RESET,
    ErrorRow,
    ModelRows,
    PartsReply,
    action_validation_row,
    error_row,
    exception_row,
    not_on_worker_row,
)
from openenv_zmq.worker.status import SlotStatus, after_reset, settled

log = logging.getLogger(__name__)

Located = list[tuple[int, int, Slot]]
"""``(row in the request, env id, slot)`` for each env id of a request hosted here."""


class SlotTable:
    """The structured env instances of a worker, by env id."""

    def __init__(self) -> None:
        self._slots: dict[int, Slot] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def status(self, env_id: int) -> SlotStatus | None:
        slot = self._slots.get(env_id)
        return None if slot is None else slot.status

    def taken(self, env_ids: list[int]) -> list[int]:
        """Those of ``env_ids`` hosted here."""
        return [env_id for env_id in env_ids if env_id in self._slots]

    def create(self, runtime: Runtime, env_ids: list[int]) -> list[ErrorRow]:
        """One env object per id (all ids must be free); a constructor that raises fails its id."""
        errors = []
        cls, kwargs = runtime.kind.cls, runtime.kwargs
        for env_id in env_ids:
            try:
                self._slots[env_id] = Slot(cls(**kwargs), runtime)
            except Exception as exc:
                errors.append(exception_row(env_id, exc))
        return errors

    def select(self, env_ids: EnvIds) -> SlotSelection:
        """The request's env ids located here, each looked up once."""
        ids: list[int] = env_ids.tolist()
        slots = self._slots
        found = [(row, env_id, slots[env_id]) for row, env_id in enumerate(ids) if env_id in slots]
        return SlotSelection(slots, ids, found)

    def drop_all(self) -> tuple[int, int]:
        """Close and forget every env; returns how many there were and how many raised."""
        slots, self._slots = self._slots, {}
        failed = 0
        for slot in slots.values():
            try:
                slot.close()
            except Exception:
                failed += 1
        return len(slots), failed


class SlotSelection:
    """The slots of one request, from :meth:`SlotTable.select`; an env id not hosted here gets
    its error row.

    Answer the request with one call of :meth:`reset`, :meth:`step`, :meth:`state` or
    :meth:`close`, before the table changes. Resets and steps of envs that run off the worker's
    thread (async, threaded or under a deadline) come back as a :class:`Deferred` whose calls
    must run before it is settled; the others are answered inline.
    """

    def __init__(self, slots: dict[int, Slot], env_ids: list[int], found: Located) -> None:
        self._slots = slots
        self.env_ids = env_ids
        self.found = found
        self.errors: list[ErrorRow] = []
        if len(found) < len(env_ids):
            self.errors = [not_on_worker_row(i) for i in env_ids if i not in slots]

    def _rows(self, part: str) -> ModelRows:
        declared = None
        if self.found:
            types = self.found[0][2].kind.types
            declared = types.state if part == "states" else types.observation
        return ModelRows(self.env_ids, part, self.errors, declared)

    def reset(self, seeds: list[Any] | None, kwargs: list[Any] | None) -> ModelRows | Deferred:
        rows = self._rows("obs")
        calls: list[Call] = []
        for i, env_id, slot in self.found:
            if slot.busy:
                rows.errors.append(error_row(env_id, *BUSY))
                continue
            call: dict[str, Any] = {"seed": None}
            if kwargs is not None:
                call.update(kwargs[i])
            if seeds is not None:
                call["seed"] = seeds[i]
            if _fresh(env_id, slot, rows):
                _reset_now_or_later(i, env_id, slot, call, rows, calls)
        return Deferred(rows, calls) if calls else rows

    def step(self, actions: Any, timeout_s: float | None = None) -> ModelRows | Deferred:
        """Raises :class:`ProtocolError` unless ``actions`` is a list (of maps, one per env id).

        ``timeout_s`` is the step's deadline, over the one the envs were made with."""
        if not isinstance(actions, list):
            raise ProtocolError("STEP actions for structured envs must be a list of maps")
        rows = self._rows("obs")
        calls: list[Call] = []
        ready: Located = []
        for located in self.found:
            i, env_id, slot = located
            if slot.busy:
                rows.errors.append(error_row(env_id, *BUSY))
            elif slot.status is SlotStatus.NEEDS_RESET:
                rows.errors.append(error_row(env_id, *NEEDS_RESET))
            elif slot.status is SlotStatus.DONE and slot.runtime.autoreset is NEXT_STEP:
                # Gymnasium's next_step: the resetting step earns nothing
                _reset_now_or_later(i, env_id, slot, {"seed": None}, rows, calls, no_reward=True)
            else:
                ready.append(located)
        parsed = _validated_actions(ready, actions, rows)
        for (i, env_id, slot), action in zip(ready, parsed, strict=True):
            if action is None:
                continue
            runtime = slot.runtime
            if timeout_s is not None or not runtime.steps_inline:
                deadline = runtime.timeout_s if timeout_s is None else timeout_s
                calls.append(_step_call(i, env_id, slot, action, deadline))
                continue
            try:
                obs = slot.env.step(action)
            except Exception as exc:
                rows.errors.append(exception_row(env_id, exc))
                continue  # the episode stays as it was: OpenEnv keeps the session
            if _put_step(env_id, slot, rows, i, obs):
                try:
                    reset = slot.env.reset(**_filtered(slot, {"seed": None}))
                except Exception as exc:
                    reset = exc
                _put_same_step_reset(env_id, slot, rows, i, reset)
        return Deferred(rows, calls) if calls else rows

    def state(self) -> ModelRows:
        rows = self._rows("states")
        for i, env_id, slot in self.found:
            if slot.env is None:
                rows.errors.append(error_row(env_id, *NEEDS_RESET))
                continue
            try:
                rows.values[i] = slot.env.state
            except Exception as exc:
                rows.errors.append(exception_row(env_id, exc))
        return rows

    def close(self) -> PartsReply:
        """Forget each env, then close it: one whose ``close()`` raises is forgotten too."""
        errors = self.errors
        for _, env_id, slot in self.found:
            if self._slots.pop(env_id, None) is None:  # named twice in the request: closed already
                errors.append(not_on_worker_row(env_id))
                continue
            try:
                slot.close()
            except Exception as exc:
                errors.append(exception_row(env_id, exc))
        return PartsReply({"errors": errors})


class Deferred:
    """A reply whose resets and steps run off the worker's thread: run every call of
    :attr:`calls` (:mod:`openenv_zmq.worker.calls`), then :meth:`settle` on the worker's thread,
    which fills the rows and leaves the slots as an inline call would have."""

    def __init__(self, rows: ModelRows, calls: list[Call]) -> None:
        self.rows = rows
        self.calls = calls
        for call in calls:
            call.slot.busy = True

    def settle(self) -> ModelRows:
        rows = self.rows
        for call in self.calls:
            slot, env_id, i = call.slot, call.env_id, call.row
            slot.busy = False
            if call.timed_out:
                rows.errors.append(error_row(env_id, "StepTimeout", call.timeout_message()))
                if call.mode is Mode.ASYNC:  # its coroutine was cancelled: nothing runs in it
                    _close_quietly(slot.env)
                # on a thread it may still be running: never touched again
                slot.env = None
                slot.status = SlotStatus.NEEDS_RESET
            elif call.action is None:
                _put_reset(env_id, slot, rows, i, call.outcome)
                if call.no_reward:
                    rows.rewards[i] = 0.0
            elif isinstance(call.outcome, BaseException):
                rows.errors.append(exception_row(env_id, call.outcome))
            elif _put_step(env_id, slot, rows, i, call.outcome) and call.reset_outcome is not None:
                _put_same_step_reset(env_id, slot, rows, i, call.reset_outcome)
            if slot.closed:
                try:
                    slot.close()
                except Exception as exc:
                    rows.errors.append(exception_row(env_id, exc))
        return rows

    def encode(self, request: Message, limits: Limits | None = None) -> list[Frame]:
        return self.settle().encode(request, limits)


NEXT_STEP = AutoresetMode.NEXT_STEP
BUSY = ("EnvBusy", "a reset or step of this env is still running; wait for its answer")


def _close_quietly(env: Any) -> None:
    """Close an instance being discarded; what its ``close()`` raises only goes to the log."""
    close = getattr(env, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:
        log.exception("closing an env abandoned at its deadline raised")


def _fresh(env_id: int, slot: Slot, rows: ModelRows) -> bool:
    """Give a slot abandoned at a deadline a new instance; ``False`` if its constructor raised."""
    if slot.env is not None:
        return True
    try:
        slot.env = slot.kind.cls(**slot.runtime.kwargs)
    except Exception as exc:
        rows.errors.append(exception_row(env_id, exc))
        return False
    return True


def _filtered(slot: Slot, call: dict[str, Any]) -> dict[str, Any]:
    """OpenEnv drops the reset arguments an env's signature does not take."""
    accepted = slot.kind.reset_params
    if accepted is None:
        return call
    return {k: v for k, v in call.items() if k in accepted}


def _reset_now_or_later(
    i: int,
    env_id: int,
    slot: Slot,
    call: dict[str, Any],
    rows: ModelRows,
    calls: list[Call],
    no_reward: bool = False,
) -> None:
    runtime = slot.runtime
    kwargs = _filtered(slot, call)
    if not runtime.resets_inline:
        mode = Mode.ASYNC if runtime.kind.async_reset else Mode.THREAD
        calls.append(Call(i, env_id, slot, mode, None, kwargs, runtime.timeout_s, no_reward))
        return
    try:
        obs = slot.env.reset(**kwargs)
    except Exception as exc:
        obs = exc
    _put_reset(env_id, slot, rows, i, obs)
    if no_reward:
        rows.rewards[i] = 0.0


def _step_call(i: int, env_id: int, slot: Slot, action: Any, deadline: float | None) -> Call:
    kind = slot.kind
    mode = Mode.ASYNC if kind.async_step else Mode.THREAD
    call = Call(i, env_id, slot, mode, action, {}, deadline)
    if deadline is not None and kind.takes_timeout:
        # The env may keep its own deadline and answer with its own observation: let it.
        call.kwargs["timeout_s"] = deadline
        call.grace_s = grace(deadline)
    if slot.runtime.autoreset is AutoresetMode.SAME_STEP:
        call.then_reset = _filtered(slot, {"seed": None})
    return call


def _put_reset(env_id: int, slot: Slot, rows: ModelRows, i: int, outcome: Any) -> None:
    """Record what a reset returned (or the exception it raised) in row ``i``."""
    if isinstance(outcome, BaseException):
        rows.errors.append(exception_row(env_id, outcome))
        slot.status = after_reset(raised=True)
        return
    try:
        done = rows.put_observation(i, outcome)
    except Exception as exc:  # not an observation
        rows.errors.append(exception_row(env_id, exc))
        slot.status = after_reset(raised=True)
        return
    slot.status = after_reset(ended=done)


def _put_step(env_id: int, slot: Slot, rows: ModelRows, i: int, obs: Any) -> bool:
    """Record a step's observation in row ``i``; ``True`` when a same-step autoreset is due."""
    try:
        done = rows.put_observation(i, obs)
    except Exception as exc:  # not an observation
        rows.errors.append(exception_row(env_id, exc))
        return False
    slot.status = settled(done)
    return done and slot.runtime.autoreset is AutoresetMode.SAME_STEP


def _put_same_step_reset(env_id: int, slot: Slot, rows: ModelRows, i: int, reset: Any) -> None:
    """Keep the ended episode's last observation as the final one; row ``i`` gets the reset's."""
    final, reward = rows.values[i], rows.rewards[i]
    _put_reset(env_id, slot, rows, i, reset)
    rows.put_final(i, final)
    rows.rewards[i], rows.terminated[i] = reward, True


def _validated_actions(ready: Located, actions: list[Any], rows: ModelRows) -> list[Any]:
    """Each ready env's action as its env's model, ``None`` where it failed (error recorded).

    Validates all actions of one model in one pydantic call; only a batch with a bad action, or
    an MCP env's batch (whose actions may be tool calls), pays for validating row by row.
    """
    kinds = {runtime.kind for runtime in {slot.runtime for _, _, slot in ready}}
    if len(kinds) == 1:
        kind = kinds.pop()
        if not kind.tagged_actions:
            batch = validate_many(kind.types.action, [actions[i] for i, _, _ in ready])
            if batch is not None:
                return list(batch)
    parsed: list[Any] = []
    for i, env_id, slot in ready:
        try:
            parsed.append(slot.kind.action_model(actions[i]).model_validate(actions[i]))
        except ValidationError as exc:
            rows.errors.append(action_validation_row(env_id, exc))
            parsed.append(None)
        except Exception as exc:  # a validator of the env's own that raised something else
            rows.errors.append(exception_row(env_id, exc))
            parsed.append(None)
    return parsed
