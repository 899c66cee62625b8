"""Env ids hosted by structured envs, one ``Environment`` object per id, sans I/O.

Each env steps on its own, but the batch shares the costly parts: the actions of one request are
validated in one pydantic call and its observations dumped in another (:class:`ModelRows`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, cast

from pydantic import ValidationError

from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.batch_models import validate_many
from openenv_zmq.env import VectorEnvironment
from openenv_zmq.errors import ProtocolError
from openenv_zmq.protocol import EnvIds
from openenv_zmq.registry import EnvTypes, env_types
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


@dataclass(slots=True)
class EnvKind:
    """What the worker needs to know about one env class, worked out once per class."""

    cls: type[Any]
    types: EnvTypes
    reset_params: frozenset[str] | None
    """Keyword arguments ``reset`` accepts; ``None`` when it takes ``**kwargs`` (all pass)."""
    vector: bool

    @classmethod
    def of(cls, env_cls: type) -> EnvKind:
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
class Slot:
    env: Any
    kind: EnvKind
    autoreset: AutoresetMode
    status: SlotStatus = SlotStatus.NEEDS_RESET

    def close(self) -> None:
        # resolve_env only requires reset/step/state, so an env class may have no close()
        close = getattr(self.env, "close", None)
        if close is not None:
            close()


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

    def create(
        self, kind: EnvKind, env_ids: list[int], kwargs: dict[str, Any], autoreset: AutoresetMode
    ) -> list[ErrorRow]:
        """One env object per id (all ids must be free); a constructor that raises fails its id."""
        errors = []
        for env_id in env_ids:
            try:
                self._slots[env_id] = Slot(kind.cls(**kwargs), kind, autoreset)
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
    :meth:`close`, before the table changes.
    """

    def __init__(self, slots: dict[int, Slot], env_ids: list[int], found: Located) -> None:
        self._slots = slots
        self.env_ids = env_ids
        self.found = found
        self.errors: list[ErrorRow] = []
        if len(found) < len(env_ids):
            self.errors = [not_on_worker_row(i) for i in env_ids if i not in slots]

    def reset(self, seeds: list[Any] | None, kwargs: list[Any] | None) -> ModelRows:
        rows = ModelRows(self.env_ids, "obs", self.errors)
        for i, env_id, slot in self.found:
            call: dict[str, Any] = {"seed": None}
            if kwargs is not None:
                call.update(kwargs[i])
            if seeds is not None:
                call["seed"] = seeds[i]
            _reset(env_id, slot, call, rows, i)
        return rows

    def step(self, actions: Any) -> ModelRows:
        """Raises :class:`ProtocolError` unless ``actions`` is a list (of maps, one per env id)."""
        if not isinstance(actions, list):
            raise ProtocolError("STEP actions for structured envs must be a list of maps")
        rows = ModelRows(self.env_ids, "obs", self.errors)
        ready: Located = []
        for located in self.found:
            i, env_id, slot = located
            if slot.status is SlotStatus.NEEDS_RESET:
                rows.errors.append(error_row(env_id, *NEEDS_RESET))
            elif slot.status is SlotStatus.DONE and slot.autoreset is AutoresetMode.NEXT_STEP:
                _reset(env_id, slot, {"seed": None}, rows, i)
                rows.rewards[i] = 0.0  # Gymnasium's next_step: the resetting step earns nothing
            else:
                ready.append(located)
        parsed = _validated_actions(ready, actions, rows)
        for (i, env_id, slot), action in zip(ready, parsed, strict=True):
            if action is None:
                continue
            try:
                done = rows.put_observation(i, slot.env.step(action))
            except Exception as exc:
                rows.errors.append(exception_row(env_id, exc))
                continue  # the episode stays as it was: OpenEnv keeps the session
            slot.status = settled(done)
            if done and slot.autoreset is AutoresetMode.SAME_STEP:
                final, reward = rows.values[i], rows.rewards[i]
                _reset(env_id, slot, {"seed": None}, rows, i)
                rows.put_final(i, final)
                rows.rewards[i], rows.terminated[i] = reward, True
        return rows

    def state(self) -> ModelRows:
        rows = ModelRows(self.env_ids, "states", self.errors)
        for i, env_id, slot in self.found:
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


def _reset(env_id: int, slot: Slot, call: dict[str, Any], rows: ModelRows, i: int) -> None:
    accepted = slot.kind.reset_params
    if accepted is not None:
        # OpenEnv drops the reset arguments an env's signature does not take
        call = {k: v for k, v in call.items() if k in accepted}
    try:
        done = rows.put_observation(i, slot.env.reset(**call))
    except Exception as exc:
        rows.errors.append(exception_row(env_id, exc))
        slot.status = after_reset(raised=True)
        return
    slot.status = after_reset(ended=done)


def _validated_actions(ready: Located, actions: list[Any], rows: ModelRows) -> list[Any]:
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
            rows.errors.append(action_validation_row(env_id, exc))
            parsed.append(None)
        except Exception as exc:  # a validator of the env's own that raised something else
            rows.errors.append(exception_row(env_id, exc))
            parsed.append(None)
    return parsed
