"""Any Gymnasium env, hosted by name: ``client.make("gym:CartPole-v1", num_envs=256)``.

Each instance is a ``gymnasium.make(id)`` env; one worker steps its instances in a loop and
answers with one array per batch, so observations and actions follow the env's spaces.
Gymnasium is an optional dependency (``pip install "openenv-zmq[gym]"``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from functools import cache
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from openenv_zmq.env import VectorEnvironment
from openenv_zmq.errors import EnvNotFound
from openenv_zmq.spaces import Box, Discrete, Space

PREFIX = "gym:"


def _space(space: Any, gym_id: str, role: str) -> Space:
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        return Box(space.low, space.high, space.shape, space.dtype)
    if isinstance(space, spaces.Discrete):
        return Discrete(int(space.n), int(space.start))
    raise EnvNotFound(
        f"{gym_id}: its {role} space {type(space).__name__} is not supported (Box, Discrete are)"
    )


class GymnasiumEnvs(VectorEnvironment):
    """``num_envs`` instances of the Gymnasium env ``gym_id``, addressed by index."""

    gym_id: ClassVar[str]

    def __init__(self, num_envs: int, **make_kwargs: Any) -> None:
        import gymnasium

        super().__init__(num_envs)
        self.envs = [gymnasium.make(self.gym_id, **make_kwargs) for _ in range(num_envs)]
        first = self.envs[0]
        self.observation_space = _space(first.observation_space, self.gym_id, "observation")
        self.action_space = _space(first.action_space, self.gym_id, "action")
        self._episodes: list[str | None] = [None] * num_envs
        self._steps = np.zeros(num_envs, np.int64)

    def reset(self, indices: npt.NDArray[np.intp], seeds: Sequence[int | None]) -> npt.NDArray[Any]:
        rows = []
        for index, seed in zip(indices.tolist(), seeds, strict=True):
            observation, _ = self.envs[index].reset(seed=seed)
            rows.append(observation)
            self._episodes[index] = uuid.uuid4().hex
        self._steps[indices] = 0
        return np.stack(rows) if rows else np.empty((0, *self.observation_space.shape))

    def step(
        self, indices: npt.NDArray[np.intp], actions: npt.NDArray[Any]
    ) -> tuple[
        npt.NDArray[Any], npt.NDArray[np.float32], npt.NDArray[np.bool_], npt.NDArray[np.bool_]
    ]:
        n = len(indices)
        rows = []
        rewards = np.zeros(n, np.float32)
        terminated = np.zeros(n, np.bool_)
        truncated = np.zeros(n, np.bool_)
        for row, (index, action) in enumerate(zip(indices.tolist(), actions, strict=True)):
            observation, rewards[row], terminated[row], truncated[row], _ = self.envs[index].step(
                action
            )
            rows.append(observation)
        self._steps[indices] += 1
        observations = np.stack(rows) if rows else np.empty((0, *self.observation_space.shape))
        return observations, rewards, terminated, truncated

    def state(self, indices: npt.NDArray[np.intp]) -> list[dict[str, Any]]:
        return [
            {"episode_id": self._episodes[i], "step_count": int(self._steps[i])}
            for i in indices.tolist()
        ]

    def close(self) -> None:
        for env in self.envs:
            env.close()


@cache
def gymnasium_env(name: str) -> type[GymnasiumEnvs]:
    """The env class hosting ``gym:<id>``; raises :class:`EnvNotFound` for unknown ids."""
    gym_id = name.removeprefix(PREFIX)
    try:
        import gymnasium
    except ImportError:
        raise EnvNotFound(f"{name!r} needs Gymnasium: pip install 'openenv-zmq[gym]'") from None
    try:
        gymnasium.spec(gym_id)
    except gymnasium.error.Error as exc:
        raise EnvNotFound(f"{name!r}: Gymnasium has no env {gym_id!r} ({exc})") from None
    return type(f"Gymnasium[{gym_id}]", (GymnasiumEnvs,), {"gym_id": gym_id})
