"""Gymnasium's ``VectorEnv`` over an env group, for CleanRL and every trainer built on Gymnasium.

``envs = openenv_zmq.gym.make_vec("tcp://127.0.0.1:5555", "cartpole", num_envs=64)`` is a
``gymnasium.vector.VectorEnv``: ``reset(seed=, options=)`` returns ``(obs, infos)``, ``step``
returns ``(obs, rewards, terminated, truncated, infos)``, and Gymnasium's vector wrappers
(``RecordEpisodeStatistics``, ``NormalizeObservation``, ...) work on it. The workers apply the
autoreset mode, so ``metadata["autoreset_mode"]`` says which one, as Gymnasium's own vector envs
do; in ``SameStep`` mode the last observation of an ended episode is in ``infos["final_obs"]``
(masked by ``infos["_final_obs"]``).

Array envs (``cartpole``, ``gym:<id>``) give arrays and Gymnasium spaces built from the ones the
workers declare. Structured envs (OpenEnv's typed envs, such as ``echo``) give a tuple of
Observation models, one per env, and take a sequence of Action models (or dicts); their
``single_observation_space`` / ``single_action_space`` is a ``spaces.Dict`` over the model's
own fields when every field maps to a Gymnasium space (``str`` -> ``Text``, ``int`` / ``float``
-> a scalar ``Box`` within the field's bounds, ``bool`` -> ``Discrete(2)``), else ``None``;
``observation_space`` / ``action_space`` are then ``spaces.Tuple`` of ``num_envs`` of them.

An env that fails raises its error from ``step`` / ``reset`` (as ``AsyncVectorEnv`` re-raises a
worker's), the message naming its index and env id. Gymnasium is an optional dependency
(``pip install 'openenv-zmq[gym]'``).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from openenv_zmq.extras import missing_extra

try:
    import gymnasium
    from gymnasium import spaces
    from gymnasium.vector import AutoresetMode as GymAutoreset
    from gymnasium.vector.utils import batch_space
except ModuleNotFoundError as exc:
    raise missing_extra("gym", "openenv_zmq.gym", exc) from exc

from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.client.results import BatchResult
from openenv_zmq.client.sync import BatchClient, EnvGroup
from openenv_zmq.errors import ClientError
from openenv_zmq.registry import env_types, resolve_env
from openenv_zmq.spaces import Box, Space
from openenv_zmq.types import Action, Observation

TEXT_MAX_LENGTH = 65_536
"""The ``Text`` space of a ``str`` field without a ``max_length`` of its own."""

_TO_GYM = {
    AutoresetMode.NEXT_STEP: GymAutoreset.NEXT_STEP,
    AutoresetMode.SAME_STEP: GymAutoreset.SAME_STEP,
    AutoresetMode.DISABLED: GymAutoreset.DISABLED,
}


def runtime_autoreset(mode: GymAutoreset | AutoresetMode | str) -> AutoresetMode:
    """The runtime's mode for Gymnasium's (``"NextStep"`` or ``AutoresetMode.NEXT_STEP``); the
    runtime's own names (``"next_step"``) are taken too. Raises :class:`ClientError`."""
    if isinstance(mode, GymAutoreset):
        mode = mode.value
    for ours, theirs in _TO_GYM.items():
        if mode in (theirs.value, ours.value):
            return ours
    names = ", ".join(repr(m.value) for m in GymAutoreset)
    raise ClientError(f"autoreset_mode must be one of {names}; got {mode!r}")


def gym_space(space: Space) -> spaces.Space[Any]:
    """Gymnasium's space for one of the runtime's array spaces."""
    if isinstance(space, Box):
        return spaces.Box(space.low, space.high, space.shape, space.dtype)
    return spaces.Discrete(space.n, start=space.start)


def model_space(model: type[BaseModel] | None) -> spaces.Dict | None:
    """A ``spaces.Dict`` over ``model``'s own fields (OpenEnv's base fields left out: ``done`` and
    ``reward`` travel as terminated and rewards, ``metadata`` is free-form), or ``None`` when a
    field has no Gymnasium counterpart."""
    if model is None:
        return None
    base = set(Observation.model_fields) | set(Action.model_fields)
    fields: dict[str, spaces.Space[Any]] = {}
    for name, info in model.model_fields.items():
        if name in base:
            continue
        field_space = _field_space(info.annotation, info.metadata)
        if field_space is None:
            return None
        fields[name] = field_space
    return spaces.Dict(fields)


def _field_space(annotation: Any, constraints: list[Any]) -> spaces.Space[Any] | None:
    bounds = {
        key: getattr(c, key)
        for c in constraints
        for key in ("ge", "le", "max_length")
        if hasattr(c, key)
    }
    if annotation is bool:
        return spaces.Discrete(2)
    if annotation is str:
        return spaces.Text(
            bounds.get("max_length", TEXT_MAX_LENGTH),
            min_length=bounds.get("min_length", 0),
            charset=string.printable,
        )
    if annotation is int:
        limits = np.iinfo(np.int64)
        return spaces.Box(bounds.get("ge", limits.min), bounds.get("le", limits.max), (), np.int64)
    if annotation is float:
        return spaces.Box(bounds.get("ge", -np.inf), bounds.get("le", np.inf), (), np.float64)
    return None


def _env_models(env: str) -> tuple[type[BaseModel] | None, type[BaseModel] | None]:
    """The Observation and Action models of ``env`` as this process finds it (none where it
    cannot import the env: its workers may have it alone)."""
    try:
        kinds = env_types(resolve_env(env))
    except Exception:
        return None, None
    return kinds.observation, kinds.action


def _tuple_of(space: spaces.Space[Any] | None, n: int) -> spaces.Space[Any] | None:
    return None if space is None else spaces.Tuple([space] * n)


def _seeds(seed: int | Sequence[int | None] | None, n: int) -> list[int | None] | None:
    if seed is None:
        return None
    if isinstance(seed, int | np.integer):
        return [int(seed) + i for i in range(n)]
    seeds = list(seed)
    if len(seeds) != n:
        raise ClientError(f"seed: {len(seeds)} seeds for {n} envs")
    return seeds


def _mask_rows(mask: Any, n: int) -> npt.NDArray[np.intp]:
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != (n,):
        raise ClientError(f"options['reset_mask'] must be a bool array of shape ({n},)")
    if not mask.any():
        raise ClientError("options['reset_mask'] marks no env to reset")
    return np.flatnonzero(mask)


def raise_first_error(result: BatchResult, env_ids: npt.NDArray[np.int64]) -> None:
    """Raise the failed env's error (the lowest env id's), its message naming the env."""
    if not result.errors:
        return
    env_id = min(result.errors)
    error = result.errors[env_id]
    index = int(np.searchsorted(env_ids, env_id))
    others = f" ({len(result.errors) - 1} other envs failed too)" if len(result.errors) > 1 else ""
    error.args = (f"env {index} (env id {env_id}): {error}{others}",)
    raise error


class ZmqVectorEnv(gymnasium.vector.VectorEnv[Any, Any, Any]):
    """A ``gymnasium.vector.VectorEnv`` stepping an :class:`EnvGroup`: one batched call per
    ``step``. ``ZmqVectorEnv(group)`` wraps a group you made (its autoreset mode is the
    metadata's); ``close()`` closes the group, and the client too when :func:`make_vec` made it.
    """

    def __init__(self, group: EnvGroup, *, client: BatchClient | None = None) -> None:
        self.group = group
        self._client = client
        self.num_envs = len(group)
        self.metadata = {"autoreset_mode": _TO_GYM[group.autoreset]}
        self.render_mode = None
        self._env_ids = group.env_ids
        if group.observation_space is not None and group.action_space is not None:
            self._structured = False
            self.single_observation_space = gym_space(group.observation_space)
            self.single_action_space = gym_space(group.action_space)
            self.observation_space = batch_space(self.single_observation_space, self.num_envs)
            self.action_space = batch_space(self.single_action_space, self.num_envs)
        else:
            self._structured = True
            kinds = _env_models(group.env)
            self.single_observation_space = model_space(kinds[0])  # type: ignore[assignment]
            self.single_action_space = model_space(kinds[1])  # type: ignore[assignment]
            self.observation_space = _tuple_of(self.single_observation_space, self.num_envs)  # type: ignore[assignment]
            self.action_space = _tuple_of(self.single_action_space, self.num_envs)  # type: ignore[assignment]
        self._observations: Any = None

    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """Reset every env, or those ``options["reset_mask"]`` marks (a bool array of
        ``num_envs``; the other rows keep their last observation). ``seed``: one int (env ``i``
        gets ``seed + i``) or one per env. The other ``options`` go to each env's ``reset`` as
        keyword arguments. Returns ``(observations, infos)``."""
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        seeds = _seeds(seed, self.num_envs)
        kwargs = options or None
        if mask is None:
            result = self.group.reset(seeds, kwargs=kwargs)
            raise_first_error(result, self._env_ids)
            self._observations = self._batch(result.observations)
            return self._observations, {}
        rows = _mask_rows(mask, self.num_envs)
        if self._observations is None:
            raise ClientError("reset() without reset_mask first: no observations to keep yet")
        chosen = seeds if seeds is None else [seeds[i] for i in rows.tolist()]
        result = self.group.reset(chosen, self._env_ids[rows], kwargs)
        raise_first_error(result, self._env_ids)
        observations = self._observations
        if isinstance(observations, np.ndarray):
            observations = observations.copy()
            observations[rows] = result.observations
        else:
            listed = list(observations)
            for row, observation in zip(rows.tolist(), result.observations, strict=True):
                listed[row] = observation
            observations = tuple(listed)
        self._observations = observations
        return observations, {}

    def step(
        self, actions: Any
    ) -> tuple[
        Any, npt.NDArray[np.float64], npt.NDArray[np.bool_], npt.NDArray[np.bool_], dict[str, Any]
    ]:
        """Step every env with its action; returns ``(observations, rewards, terminated,
        truncated, infos)``, rewards as float64 as Gymnasium's vector envs give them."""
        result = self.group.step(actions)
        raise_first_error(result, self._env_ids)
        self._observations = self._batch(result.observations)
        infos: dict[str, Any] = {}
        if result.final_observations is not None:
            ended = result.terminated | result.truncated
            final = np.full(self.num_envs, None, dtype=object)
            for row in np.flatnonzero(ended).tolist():
                final[row] = result.final_observations[row]
            infos["final_obs"], infos["_final_obs"] = final, ended
            infos["final_info"], infos["_final_info"] = {}, ended.copy()
        return (
            self._observations,
            result.rewards.astype(np.float64),
            result.terminated,
            result.truncated,
            infos,
        )

    def close_extras(self, **kwargs: Any) -> None:
        """Close the group, and the client :func:`make_vec` made."""
        if self._client is not None:
            self._client.close()
        else:
            self.group.close()

    def __enter__(self) -> ZmqVectorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _batch(self, observations: Any) -> Any:
        return tuple(observations) if self._structured else observations

    def __repr__(self) -> str:
        return f"<ZmqVectorEnv {self.group!r}>"


def make_vec(
    client: BatchClient | str,
    env: str,
    num_envs: int = 1,
    *,
    autoreset_mode: GymAutoreset | AutoresetMode | str = GymAutoreset.NEXT_STEP,
    **make_kwargs: Any,
) -> ZmqVectorEnv:
    """Make ``num_envs`` instances of ``env`` and wrap them as a Gymnasium ``VectorEnv``.

    ``client``: a :class:`BatchClient`, or a broker address to connect one (closed with the
    vector env). ``autoreset_mode``: Gymnasium's (``NextStep`` by default, as Gymnasium's vector
    envs). ``make_kwargs`` go to :meth:`BatchClient.make` (the env's constructor arguments and
    the runtime's options, such as ``concurrency`` or ``timeout_s``).
    """
    if "autoreset" in make_kwargs:
        raise ClientError("make_vec takes Gymnasium's autoreset_mode=, not autoreset=")
    group, owned = make_group(client, env, num_envs, runtime_autoreset(autoreset_mode), make_kwargs)
    return ZmqVectorEnv(group, client=owned)


def make_group(
    client: BatchClient | str,
    env: str,
    num_envs: int,
    autoreset: AutoresetMode,
    make_kwargs: dict[str, Any],
) -> tuple[EnvGroup, BatchClient | None]:
    """The group an adapter wraps, and the client made for it when ``client`` is an address
    (the adapter closes it); the client is closed again if making the group fails."""
    owned = BatchClient(client) if isinstance(client, str) else None
    maker = client if owned is None else owned
    assert isinstance(maker, BatchClient)
    try:
        return maker.make(env, num_envs, autoreset=autoreset, **make_kwargs), owned
    except BaseException:
        if owned is not None:
            owned.close()
        raise
