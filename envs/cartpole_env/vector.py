"""CartPole for thousands of instances in one object, bit for bit Gymnasium's ``CartPole-v1``.

The dynamics repeat ``gymnasium.envs.classic_control.cartpole.CartPoleEnv.step`` operation for
operation in float64, so observations (the float64 state cast to float32), rewards and
termination equal Gymnasium's exactly; truncation is what ``gymnasium.make``'s ``TimeLimit``
adds. Seeded resets draw the same initial states as ``env.reset(seed=s)``: Gymnasium seeds
``Generator(PCG64(SeedSequence(s)))``, and :class:`PCG64Streams` runs that seeding and
generator for every instance at once on arrays instead of holding one ``Generator`` object per
instance. Gymnasium is not imported; the tests compare against it.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from cartpole_env.rng import PCG64Streams
from openenv_zmq.env import VectorEnvironment
from openenv_zmq.errors import NeedsReset
from openenv_zmq.spaces import Box, Discrete

F64 = npt.NDArray[np.float64]


class CartPoleVectorEnv(VectorEnvironment):
    """``num_envs`` CartPole-v1 instances.

    ``states`` is the float64 state, one ``(x, x_dot, theta, theta_dot)`` row per instance; rows
    may be written between calls, as Gymnasium's ``env.unwrapped.state``, to start from chosen
    states.

    Call order per index: :meth:`reset` before the first :meth:`step`. Stepping past the end of
    an episode keeps integrating, as Gymnasium does (the reward is 0.0 after a termination has
    been reported, 1.0 otherwise), and ``truncated`` stays true; the caller decides when to
    reset. Per instance the env holds a few numbers in arrays, no Python objects.
    """

    gravity = 9.8
    masscart = 1.0
    masspole = 0.1
    total_mass = masspole + masscart
    length = 0.5  # half the pole's length
    polemass_length = masspole * length
    force_mag = 10.0
    tau = 0.02
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4
    reset_low, reset_high = -0.05, 0.05

    # Twice the termination thresholds, so a terminal observation still lies inside the box.
    _high = np.array(
        [x_threshold * 2, np.inf, theta_threshold_radians * 2, np.inf], dtype=np.float32
    )
    observation_space = Box(-_high, _high, (4,), np.float32)
    action_space = Discrete(2)

    def __init__(self, num_envs: int, max_episode_steps: int = 500) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be at least 1, got {max_episode_steps}")
        super().__init__(num_envs)
        self.max_episode_steps = max_episode_steps
        self.states = np.zeros((num_envs, 4), np.float64)
        self._steps = np.zeros(num_envs, np.int64)
        self._started = np.zeros(num_envs, np.bool_)
        # Gymnasium's `steps_beyond_terminated is not None`: later steps earn no reward.
        self._terminated = np.zeros(num_envs, np.bool_)
        self._rng = PCG64Streams(num_envs)
        # Episode ids are 128 random bits per reset, shown as uuid4 hex only when asked for.
        self._episode_bits = np.zeros((num_envs, 2), np.uint64)
        self._id_rng = np.random.default_rng()

    def reset(
        self, indices: npt.NDArray[np.intp], seeds: Sequence[int | None]
    ) -> npt.NDArray[np.float32]:
        """Start new episodes at ``indices``; returns float32 observations ``(len(indices), 4)``.

        ``seeds[i]`` reseeds instance ``indices[i]`` as ``CartPoleEnv.reset(seed=...)`` does;
        ``None`` continues its generator (seeded from OS entropy on first use). Raises
        ``ValueError`` if the lengths differ or a seed is negative, ``TypeError`` for a seed
        that is not an int.
        """
        indices = np.asarray(indices, np.intp)
        if len(seeds) != len(indices):
            raise ValueError(f"{len(seeds)} seeds for {len(indices)} indices")
        given = np.array([seed is not None for seed in seeds], np.bool_)
        if given.any():
            self._rng.seed(indices[given], [seed for seed in seeds if seed is not None])
        fresh = indices[~given & ~self._started[indices]]
        if len(fresh):
            self._rng.seed_randomly(fresh)
        state = self._rng.uniform(indices, self.reset_low, self.reset_high, 4)
        self.states[indices] = state
        self._steps[indices] = 0
        self._started[indices] = True
        self._terminated[indices] = False
        self._episode_bits[indices] = self._id_rng.integers(
            0, np.iinfo(np.uint64).max, (len(indices), 2), np.uint64, endpoint=True
        )
        return state.astype(np.float32)

    def step(
        self, indices: npt.NDArray[np.intp], actions: npt.NDArray[Any]
    ) -> tuple[
        npt.NDArray[np.float32],
        npt.NDArray[np.float32],
        npt.NDArray[np.bool_],
        npt.NDArray[np.bool_],
    ]:
        """Push each cart left (action 0) or right (1) for one 0.02 s Euler step.

        Raises ``ValueError`` naming the indices whose action is not 0 or 1 (or if the lengths
        differ), and :class:`~openenv_zmq.errors.NeedsReset` naming indices never reset;
        nothing changes when it raises.
        """
        indices = np.asarray(indices, np.intp)
        actions = np.asarray(actions)
        if actions.shape != indices.shape:
            raise ValueError(f"actions of shape {actions.shape} for {len(indices)} indices")
        bad = (actions != 0) & (actions != 1)
        if bad.any():
            raise ValueError(
                f"CartPole actions must be 0 or 1; indices {indices[bad].tolist()} "
                f"got {actions[bad].tolist()}"
            )
        unstarted = ~self._started[indices]
        if unstarted.any():
            raise NeedsReset(f"indices {indices[unstarted].tolist()} were stepped before reset()")

        # Same operations in the same order as CartPoleEnv.step, so results match to the bit.
        x, x_dot, theta, theta_dot = self.states[indices].T
        force = np.where(actions == 1, self.force_mag, -self.force_mag)
        costheta = np.cos(theta)
        sintheta = np.sin(theta)
        temp = (force + self.polemass_length * np.square(theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * np.square(costheta) / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        state = np.stack(
            (
                x + self.tau * x_dot,
                x_dot + self.tau * xacc,
                theta + self.tau * theta_dot,
                theta_dot + self.tau * thetaacc,
            ),
            axis=1,
        )
        self.states[indices] = state

        x, theta = state[:, 0], state[:, 2]
        terminated = (
            (x < -self.x_threshold)
            | (x > self.x_threshold)
            | (theta < -self.theta_threshold_radians)
            | (theta > self.theta_threshold_radians)
        )
        rewards = np.where(terminated & self._terminated[indices], 0.0, 1.0).astype(np.float32)
        self._terminated[indices] |= terminated
        steps = self._steps[indices] + 1
        self._steps[indices] = steps
        truncated = steps >= self.max_episode_steps
        return state.astype(np.float32), rewards, terminated, truncated

    def state(self, indices: npt.NDArray[np.intp]) -> list[dict[str, Any]]:
        """``episode_id`` (uuid4 hex, ``None`` before the first reset), ``step_count`` and the
        float64 state, per index."""
        indices = np.asarray(indices, np.intp)
        rows = self.states[indices].tolist()
        steps = self._steps[indices].tolist()
        started = self._started[indices].tolist()
        bits = self._episode_bits[indices].tolist()
        return [
            {
                "episode_id": _episode_id(hi, lo) if on else None,
                "step_count": count,
                "x": row[0],
                "x_dot": row[1],
                "theta": row[2],
                "theta_dot": row[3],
            }
            for row, count, on, (hi, lo) in zip(rows, steps, started, bits, strict=True)
        ]


def _episode_id(hi: int, lo: int) -> str:
    return uuid.UUID(int=(hi << 64) | lo, version=4).hex
