"""OpenEnv RFC 004's ``EnvPool``: a stack of ``n`` envs a training loop steps together.

The RFC's example::

    envs = EnvPool("code_env", n=64)
    observations = await envs.step_batch(actions)
    rewards = [obs.reward for obs in observations]

Here each env is one session of an :class:`~openenv_zmq.pool.aio.AsyncSessionPool`; a
``step_batch`` steps them all at once, so the pool sends them as one batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from openenv_zmq.client.transport import DEFAULT_TIMEOUT
from openenv_zmq.curve import CurveDir
from openenv_zmq.errors import BatchSizeMismatch
from openenv_zmq.pool.aio import AsyncPoolSession, AsyncSessionPool
from openenv_zmq.types import StepResult

T = TypeVar("T")


class EnvPool:
    """``n`` instances of ``env`` on the broker at ``address``, stepped together.

    ``async with EnvPool("echo", n=64, address=...) as envs:`` (or ``await envs.open()`` and
    ``await envs.close()``). ``env_kwargs`` go to the envs' constructor; ``timeout`` and
    ``curve_dir`` are the client's. Each method raises the first env error of the batch (env
    order), once every env has answered; the other envs' calls are done.
    """

    def __init__(
        self,
        env: str,
        n: int,
        *,
        address: str,
        env_kwargs: dict[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        curve_dir: CurveDir | None = None,
    ) -> None:
        self._pool = AsyncSessionPool(
            address, env=env, size=n, env_kwargs=env_kwargs, timeout=timeout, curve_dir=curve_dir
        )
        self._envs: list[AsyncPoolSession] = []

    def __len__(self) -> int:
        return self._pool.size

    async def open(self) -> EnvPool:
        """Make the ``n`` envs; returns the pool."""
        await self._pool.open()
        self._envs = [await self._pool.acquire() for _ in range(self._pool.size)]
        return self

    async def reset_batch(self, seed: int | None = None, **kwargs: Any) -> list[Any]:
        """A new episode on every env, env ``i`` seeded ``seed + i`` (as ``EnvGroup.reset``);
        ``kwargs`` go to each env's ``reset``. Their first observations, in env order."""
        resets = [
            env.reset(seed=None if seed is None else seed + i, **kwargs)
            for i, env in enumerate(self._envs)
        ]
        return [result.observation for result in await self._gather(resets)]

    async def step_batch(self, actions: Sequence[Any]) -> list[Any]:
        """``actions[i]`` on env ``i`` (one per env); the observations, each with its
        ``reward`` and ``done``, in env order. An env not reset yet is reset first."""
        if len(actions) != len(self._envs):
            raise BatchSizeMismatch(f"{len(actions)} actions for {len(self._envs)} envs")
        steps = [env.step(action) for env, action in zip(self._envs, actions, strict=True)]
        return [result.observation for result in await self._gather(steps)]

    async def close(self) -> None:
        """Close the envs and the connection."""
        await self._pool.close()

    async def __aenter__(self) -> EnvPool:
        try:
            return await self.open()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @staticmethod
    async def _gather(calls: Sequence[Awaitable[StepResult[T]]]) -> list[StepResult[T]]:
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        results = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            results.append(outcome)
        return results
