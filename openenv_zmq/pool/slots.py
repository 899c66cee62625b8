"""The env slots of one group, handed out one per session and stepped in coalesced batches.

Steps (and resets) that sessions send while the previous call is in flight go to the broker as
ONE batched call on the slots concerned (:class:`~openenv_zmq.pool.batcher.Batcher`), so many
sessions cost few batches. The gateway's OpenEnv sessions and the public session pools
(:mod:`openenv_zmq.pool.aio`) both stand on a :class:`SlotPool`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import suppress
from typing import Any, Self

import numpy as np

from openenv_zmq.client.aio import AsyncBatchClient, AsyncEnvGroup
from openenv_zmq.client.results import BatchResult
from openenv_zmq.errors import TransportError
from openenv_zmq.pool.batcher import Answer, Batcher, settle

ResetCall = tuple[int | None, dict[str, Any]]
"""A reset's seed and its other keyword arguments."""


class SlotPool:
    """``max_sessions`` env slots of one env group, handed out to sessions one each.

    Call order: ``acquire()`` a slot (``None`` when all are taken), then any number of
    ``reset`` / ``step`` / ``state`` on it, one at a time, then ``release()``. A slot whose
    session has not reset it yet is reset (without a seed) before its first step or state, so
    no session sees another's episode.

    ``reset`` and ``step`` return the env's observation and ``state`` its state: models, or the
    decoded dicts when the group was made with ``as_dicts`` (the gateway forwards them as JSON,
    so no model is built). A failing env raises its ``EnvError`` (``ActionValidationError``,
    with pydantic's error list, for a bad action); a failed call raises the client's error
    (``RequestTimeout``, ``RemoteError``, ...); a call after :meth:`close` ``ClosedError``.
    """

    def __init__(self, group: AsyncEnvGroup) -> None:
        self.group = group
        self.max_sessions = len(group)
        self._free: list[int] = group.env_ids.tolist()[::-1]
        self._ready: set[int] = set()
        self._steps: Batcher[Any] = Batcher(self._send_steps)
        self._resets: Batcher[ResetCall] = Batcher(self._send_resets)

    @classmethod
    async def open(
        cls,
        client: AsyncBatchClient,
        env: str,
        max_sessions: int,
        *,
        as_dicts: bool = False,
        env_kwargs: dict[str, Any] | None = None,
    ) -> Self:
        """Make ``max_sessions`` instances of ``env`` on ``client``'s broker (with
        ``env_kwargs`` for their constructor)."""
        group = await client.make(
            env, num_envs=max_sessions, as_dicts=as_dicts, env_kwargs=env_kwargs
        )
        return cls(group)

    @property
    def active_sessions(self) -> int:
        """Slots handed out and not released."""
        return self.max_sessions - len(self._free)

    def acquire(self) -> int | None:
        """A free slot (env id) for a new session, or ``None`` when every slot is taken."""
        return self._free.pop() if self._free else None

    def release(self, slot: int) -> None:
        """Give the slot back; its episode is not continued by the next session."""
        self._ready.discard(slot)
        self._free.append(slot)

    async def reset(
        self, slot: int, seed: int | None = None, kwargs: dict[str, Any] | None = None
    ) -> Any:
        """Start a new episode on ``slot``; ``kwargs`` go to the env's ``reset``."""
        observation = await self._resets.submit(slot, (seed, kwargs or {}))
        self._ready.add(slot)
        return observation

    async def step(self, slot: int, action: Any, timeout_s: float | None = None) -> Any:
        """Apply ``action`` (the env's Action model, or its fields as a dict) on ``slot``.

        ``timeout_s`` is the step's deadline: such a step goes out on its own, as a batch
        shares one deadline."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.post_step(slot, action, timeout_s, answer)
        return await answer

    def post_step(self, slot: int, action: Any, timeout_s: float | None, answer: Answer) -> None:
        """:meth:`step` without waiting, from the pool's event loop: the outcome goes to
        ``answer``. A step of a slot already reset, with no deadline, starts no task."""
        if timeout_s is None and slot in self._ready:
            self._steps.post(slot, action, answer)
        else:
            settle(answer, asyncio.ensure_future(self._step_first(slot, action, timeout_s)))

    async def state(self, slot: int) -> Any:
        """The env's state on ``slot``."""
        await self._ensure_reset(slot)
        [state] = await self.group.state(env_ids=[slot])
        return state

    async def close(self) -> None:
        """Stop pending batches and close the env group, unless the broker is gone (a gateway
        stopped with its broker, by one Ctrl-C or two): its slots went with it."""
        await self._steps.close()
        await self._resets.close()
        with suppress(TransportError):
            await self.group.close()

    async def _ensure_reset(self, slot: int) -> None:
        if slot not in self._ready:
            await self.reset(slot)

    async def _step_first(self, slot: int, action: Any, timeout_s: float | None) -> Any:
        # A step that must reset the slot first, or that has a deadline of its own.
        await self._ensure_reset(slot)
        if timeout_s is None:
            return await self._steps.submit(slot, action)
        result = await self.group.step([action], env_ids=[slot], timeout_s=timeout_s)
        result.raise_for_errors()
        return result.observations[0]

    async def _send_steps(self, slots: list[int], actions: list[Any]) -> BatchResult:
        return await self.group.step(actions, env_ids=np.asarray(slots, np.int64))

    async def _send_resets(self, slots: list[int], calls: Sequence[ResetCall]) -> BatchResult:
        return await self.group.reset(
            seed=[seed for seed, _ in calls],
            env_ids=np.asarray(slots, np.int64),
            kwargs=[kwargs for _, kwargs in calls],
        )
