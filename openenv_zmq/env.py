"""The environment interfaces: OpenEnv's ``Environment`` (unchanged) and ``VectorEnvironment``.

An env is any class with OpenEnv's ``reset(seed, episode_id, **kw)``, ``step(action)`` and
``state``; subclassing :class:`Environment` is the documented way, but an OpenEnv
``Environment`` subclass works as it is. Finding envs by name is :mod:`openenv_zmq.registry`'s job.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from openenv_zmq.spaces import Space
from openenv_zmq.types import Action, Observation, State

ActT = TypeVar("ActT", bound=Action)
ObsT = TypeVar("ObsT", bound=Observation)
StateT = TypeVar("StateT", bound=State)


class Environment(ABC, Generic[ActT, ObsT, StateT]):
    """OpenEnv's environment ABC: one stateful instance, ``reset()`` / ``step()`` / ``state``.

    Subclasses name their types through the generic parameters
    (``class EchoEnvironment(Environment[EchoAction, EchoObservation, State])``) or through
    the annotations of ``step``; the worker validates incoming actions against that action type.
    """

    SUPPORTS_CONCURRENT_SESSIONS: bool = False
    STEP_CONCURRENCY: int | None = None
    """Set it (to the number of steps that may wait at once on a worker) when ``step`` blocks on
    I/O: the env's resets and steps then run on that many threads instead of one after the other
    on the worker's thread. ``make(..., concurrency=N)`` overrides it."""

    def __init__(self, transform: Any = None, rubric: Any = None) -> None:
        self.transform = transform
        self.rubric = rubric

    @abstractmethod
    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> ObsT:
        """Start a new episode and return its first observation."""

    @abstractmethod
    def step(self, action: ActT, timeout_s: float | None = None, **kwargs: Any) -> ObsT:
        """Apply one action and return the next observation."""

    async def reset_async(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> ObsT:
        """OpenEnv's async reset. Override it with a real ``async def`` (one that awaits) and
        the worker awaits it on its event loop, concurrently with the rest of the batch."""
        return self.reset(seed=seed, episode_id=episode_id, **kwargs)

    async def step_async(self, action: ActT, timeout_s: float | None = None, **kwargs: Any) -> ObsT:
        """OpenEnv's async step; overriding it makes the env async, as for :meth:`reset_async`."""
        return self.step(action, timeout_s=timeout_s, **kwargs)

    @property
    @abstractmethod
    def state(self) -> StateT:
        """The current episode's state."""

    def close(self) -> None:
        """Release what the env holds; called when its slot is closed."""


class VectorEnvironment(ABC):
    """``num_envs`` instances owned by one object and stepped together with numpy.

    Gymnasium's ``VectorEnv`` idea, with EnvPool's index addressing: every call names the
    instances it concerns by ``indices`` (positions ``0 .. num_envs - 1``, no repeats), because a
    batch may be any subset (``send`` / ``recv``, ragged steps). Observations and actions are
    arrays of ``observation_space`` / ``action_space`` (class or instance attributes), one row per
    index. The worker handles autoreset; a vector env only resets when told to.
    """

    observation_space: Space
    action_space: Space

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs

    @abstractmethod
    def reset(self, indices: npt.NDArray[np.intp], seeds: Sequence[int | None]) -> npt.NDArray[Any]:
        """Start new episodes at ``indices`` (``seeds[i]`` for ``indices[i]``, ``None`` to keep
        the generator going); return their first observations, shape ``(len(indices), *obs)``."""

    @abstractmethod
    def step(
        self, indices: npt.NDArray[np.intp], actions: npt.NDArray[Any]
    ) -> tuple[
        npt.NDArray[Any], npt.NDArray[np.float32], npt.NDArray[np.bool_], npt.NDArray[np.bool_]
    ]:
        """Apply ``actions[i]`` at ``indices[i]``; return observations, rewards (float32),
        terminated and truncated (bool), one row per index."""

    @abstractmethod
    def state(self, indices: npt.NDArray[np.intp]) -> list[dict[str, Any]]:
        """One OpenEnv-style state dict (``episode_id``, ``step_count``, ...) per index."""

    def close(self) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Release what the instances hold."""
