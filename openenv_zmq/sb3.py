"""Stable-Baselines3's ``VecEnv`` over an env group: ``PPO("MlpPolicy", make_vec_env(...))``.

``openenv_zmq.sb3.make_vec_env("tcp://127.0.0.1:5555", "cartpole", num_envs=8)`` behaves as
SB3's ``DummyVecEnv`` of the same envs: ``reset()`` returns the observations alone, ``step``
returns ``(obs, rewards, dones, infos)`` with the ended envs already reset (the workers do it in
the same step), each ended env's last observation in ``infos[i]["terminal_observation"]`` and
``infos[i]["TimeLimit.truncated"]`` set as SB3 sets it. Seeds and options given with
``seed()`` / ``set_options()`` go to the next ``reset()``, as SB3 does.

The envs live in worker processes: ``get_attr`` reads the fields of each env's State
(``step_count``, ``episode_id``, ...), ``env_method`` runs what the runtime can run on an env
(``reset``, ``state``), ``set_attr`` cannot reach them and says so, and ``env_is_wrapped`` is
false (wrap the vector env, with ``VecMonitor`` for episode statistics). Array envs only: SB3's
policies take arrays. Needs ``stable-baselines3`` (``pip install 'openenv-zmq[sb3]'``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from openenv_zmq.extras import missing_extra

try:
    from stable_baselines3.common.vec_env.base_vec_env import (
        VecEnv,
        VecEnvIndices,
        VecEnvObs,
        VecEnvStepReturn,
    )
except ModuleNotFoundError as exc:
    raise missing_extra("sb3", "openenv_zmq.sb3", exc) from exc

from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.client.sync import BatchClient, EnvGroup
from openenv_zmq.errors import ClientError
from openenv_zmq.gym import gym_space, make_group, raise_first_error

_ENV_METHODS = ("reset", "state")


class ZmqVecEnv(VecEnv):
    """An SB3 ``VecEnv`` stepping an :class:`EnvGroup` made with ``autoreset="same_step"``
    (SB3's own autoreset). ``close()`` closes the group, and the client too when
    :func:`make_vec_env` made it. Raises :class:`ClientError` for a group of a structured env or
    in another autoreset mode."""

    def __init__(self, group: EnvGroup, *, client: BatchClient | None = None) -> None:
        if group.observation_space is None or group.action_space is None:
            raise ClientError(
                f"{group.env!r} is not an array env: SB3's policies need array observations"
            )
        if group.autoreset is not AutoresetMode.SAME_STEP:
            raise ClientError(
                "an SB3 VecEnv resets an ended env in the same step: make the group with"
                f" autoreset='same_step', not {group.autoreset.value!r}"
            )
        self.group = group
        self._client = client
        self._env_ids = group.env_ids
        self._actions: Any = None
        super().__init__(
            len(group), gym_space(group.observation_space), gym_space(group.action_space)
        )

    def reset(self) -> VecEnvObs:
        """Reset every env with the seeds and options set since the last reset."""
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        options = None if not any(self._options) else list(self._options)
        result = self.group.reset(seeds, kwargs=options)
        raise_first_error(result, self._env_ids)
        self._reset_seeds()
        self._reset_options()
        observations: np.ndarray = result.observations
        return observations

    def step_async(self, actions: np.ndarray) -> None:
        """Hold the actions for :meth:`step_wait` (SB3 calls the two back to back)."""
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        """Step every env with the held actions: ``(obs, rewards, dones, infos)``."""
        result = self.group.step(self._actions)
        raise_first_error(result, self._env_ids)
        terminated, truncated = result.terminated, result.truncated
        dones = terminated | truncated
        cut = (truncated & ~terminated).tolist()
        infos: list[dict[str, Any]] = [{"TimeLimit.truncated": flag} for flag in cut]
        for row in np.flatnonzero(dones).tolist():
            infos[row]["terminal_observation"] = result.final_observations[row]
        return result.observations, result.rewards, dones, infos

    def close(self) -> None:
        """Close the group, and the client :func:`make_vec_env` made."""
        if self._client is not None:
            self._client.close()
        else:
            self.group.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """A field of each env's State (``render_mode`` is ``None``: workers do not render).
        Raises ``AttributeError`` for a field the State does not have."""
        rows = list(self._get_indices(indices))
        if attr_name == "render_mode":
            return [None] * len(rows)
        states = self.group.state(self._env_ids[rows])
        try:
            return [
                state[attr_name] if isinstance(state, dict) else getattr(state, attr_name)
                for state in states
            ]
        except (KeyError, AttributeError):
            raise AttributeError(f"the envs' State has no field {attr_name!r}") from None

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Not possible here: raises :class:`ClientError`."""
        raise ClientError(
            f"set_attr({attr_name!r}): the envs run in worker processes; their attributes"
            " cannot be set from the trainer (pass constructor arguments to make_vec_env)"
        )

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        """``reset`` (keyword arguments go to each env's reset; returns the observations) or
        ``state`` of the envs at ``indices``; raises :class:`ClientError` for another name."""
        if method_name not in _ENV_METHODS or method_args:
            raise ClientError(
                f"env_method({method_name!r}): the envs run in worker processes; the methods"
                f" that reach them are {', '.join(_ENV_METHODS)}, with keyword arguments only"
            )
        env_ids = self._env_ids[list(self._get_indices(indices))]
        if method_name == "state":
            return self.group.state(env_ids)
        result = self.group.reset(env_ids=env_ids, kwargs=method_kwargs or None)
        raise_first_error(result, self._env_ids)
        return list(result.observations)

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        """False for each env: no Gymnasium wrapper runs around the remote envs."""
        return [False] * len(list(self._get_indices(indices)))

    def __repr__(self) -> str:
        return f"<ZmqVecEnv {self.group!r}>"


def make_vec_env(
    client: BatchClient | str, env: str, num_envs: int = 1, **make_kwargs: Any
) -> ZmqVecEnv:
    """Make ``num_envs`` instances of ``env`` (autoreset ``same_step``, as SB3 steps) and wrap
    them as an SB3 ``VecEnv``. ``client``: a :class:`BatchClient`, or a broker address to
    connect one (closed with the vector env). ``make_kwargs`` go to :meth:`BatchClient.make`."""
    if "autoreset" in make_kwargs:
        raise ClientError("an SB3 VecEnv always resets in the same step: drop autoreset=")
    group, owned = make_group(client, env, num_envs, AutoresetMode.SAME_STEP, make_kwargs)
    return ZmqVecEnv(group, client=owned)
