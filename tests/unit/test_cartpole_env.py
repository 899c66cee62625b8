"""The numpy CartPole equals Gymnasium's ``CartPole-v1`` to the bit, for any subset of indices."""

from __future__ import annotations

import uuid
import warnings
from typing import Any

import gymnasium
import numpy as np
import numpy.typing as npt
import pytest
from cartpole_env import CartPoleVectorEnv
from cartpole_env.rng import PCG64Streams
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from openenv_zmq.env import VectorEnvironment
from openenv_zmq.errors import NeedsReset
from openenv_zmq.registry import resolve_env
from openenv_zmq.spaces import Box, Discrete

SEEDS = [0, 1, 5, 42, 123, 2**31, 2**32 - 1, 2**32, 2**63 + 11, 2**64 + 7, 2**128 + 12345, 3**100]
"""Seeds of one to six 32-bit words: numpy's SeedSequence treats each width differently."""


def every(n: int) -> npt.NDArray[np.intp]:
    return np.arange(n, dtype=np.intp)


def random_states(rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
    """Start states across the whole non-terminal region, faster than any reset would give."""
    scale = np.array([2.3, 2.0, 0.2, 2.0])
    return rng.uniform(-scale, scale, size=(n, 4))


def balance(obs: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """A controller that keeps the pole up for 500 steps from Gymnasium's start states."""
    return (obs[..., 2] + 0.5 * obs[..., 3] > 0).astype(np.int64)


def test_registered_as_cartpole() -> None:
    assert resolve_env("cartpole") is CartPoleVectorEnv
    assert issubclass(CartPoleVectorEnv, VectorEnvironment)


def test_spaces_match_gymnasium() -> None:
    env = CartPoleVectorEnv(3)
    gym_space = CartPoleEnv().observation_space
    assert isinstance(gym_space, gymnasium.spaces.Box)
    assert isinstance(env.observation_space, Box)
    assert env.observation_space.shape == (4,)
    assert env.observation_space.dtype == np.float32
    assert np.array_equal(env.observation_space.low, gym_space.low)
    assert np.array_equal(env.observation_space.high, gym_space.high)
    assert env.action_space == Discrete(2)
    assert env.num_envs == 3


@pytest.mark.parametrize(("num_envs", "max_steps"), [(0, 500), (4, 0)])
def test_constructor_refuses_empty_sizes(num_envs: int, max_steps: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CartPoleVectorEnv(num_envs, max_episode_steps=max_steps)


def test_streams_match_numpy_pcg64() -> None:
    streams = PCG64Streams(len(SEEDS))
    rows = every(len(SEEDS))
    streams.seed(rows, SEEDS)
    for row, seed in enumerate(SEEDS):
        state = np.random.PCG64(seed).state["state"]
        assert state["state"] == (int(streams.state_hi[row]) << 64) | int(streams.state_lo[row])
        assert state["inc"] == (int(streams.inc_hi[row]) << 64) | int(streams.inc_lo[row])
    raw = [streams.next_uint64(rows) for _ in range(3)]
    uniform = streams.uniform(rows, -0.05, 0.05, 4)
    for row, seed in enumerate(SEEDS):
        generator = np.random.Generator(np.random.PCG64(seed))
        assert generator.bit_generator.random_raw(3).tolist() == [int(r[row]) for r in raw]
        assert np.array_equal(generator.uniform(-0.05, 0.05, 4), uniform[row])


def test_seeded_resets_match_gymnasium() -> None:
    env = CartPoleVectorEnv(len(SEEDS))
    obs = env.reset(every(len(SEEDS)), SEEDS)
    assert obs.dtype == np.float32
    assert obs.shape == (len(SEEDS), 4)
    for row, seed in enumerate(SEEDS):
        expected, _ = gymnasium.make("CartPole-v1").reset(seed=seed)
        assert np.array_equal(obs[row], expected)


def test_unseeded_reset_continues_the_generator_like_gymnasium() -> None:
    gym_envs = [gymnasium.make("CartPole-v1") for _ in SEEDS]
    env = CartPoleVectorEnv(len(SEEDS))
    env.reset(every(len(SEEDS)), SEEDS)
    for gym_env, seed in zip(gym_envs, SEEDS, strict=True):
        gym_env.reset(seed=seed)
    for _ in range(3):
        obs = env.reset(every(len(SEEDS)), [None] * len(SEEDS))
        for row, gym_env in enumerate(gym_envs):
            assert np.array_equal(obs[row], gym_env.reset()[0])


def test_first_unseeded_reset_draws_fresh_entropy() -> None:
    first = CartPoleVectorEnv(64).reset(every(64), [None] * 64)
    second = CartPoleVectorEnv(64).reset(every(64), [None] * 64)
    assert np.all(np.abs(first) < 0.05)
    assert not np.array_equal(first, second)
    assert len(np.unique(first[:, 0])) == 64


def test_reseeding_repeats_the_episode_start() -> None:
    env = CartPoleVectorEnv(2)
    first = env.reset(every(2), [7, 7])
    env.reset(every(2), [None, None])
    assert np.array_equal(env.reset(every(2), [7, None])[0], first[0])
    assert np.array_equal(first[0], first[1])


@pytest.mark.parametrize("batch_seed", range(4))
def test_steps_match_gymnasium_bit_for_bit(batch_seed: int) -> None:
    """Hundreds of instances in one batch (numpy's strided and SIMD paths), each against its own
    CartPoleEnv, from random states and with random actions, also past termination."""
    rng = np.random.default_rng(batch_seed)
    n = 200
    env = CartPoleVectorEnv(n)
    env.reset(every(n), [None] * n)
    start = random_states(rng, n)
    env.states[:] = start
    gym_envs: list[gymnasium.Env[Any, Any]] = [CartPoleEnv() for _ in range(n)]
    for gym_env, row in zip(gym_envs, start, strict=True):
        gym_env.reset(seed=0)
        gym_env.unwrapped.state = row.copy()  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        # Gymnasium warns once per env when it is stepped after terminating.
        warnings.simplefilter("ignore")
        for _ in range(60):
            actions = rng.integers(0, 2, n)
            obs, rewards, terminated, truncated = env.step(every(n), actions)
            for row, gym_env in enumerate(gym_envs):
                gym_obs, gym_reward, gym_terminated, _, _ = gym_env.step(int(actions[row]))
                assert np.array_equal(obs[row], gym_obs)
                assert rewards[row] == gym_reward
                assert terminated[row] == gym_terminated
            assert not truncated.any()
    assert terminated.any()
    assert (rewards == 0.0).any()
    for row, gym_env in enumerate(gym_envs):
        assert np.array_equal(env.states[row], gym_env.unwrapped.state)  # type: ignore[attr-defined]


def test_truncation_at_500_like_cartpole_v1() -> None:
    seeds = [0, 1, 2]
    gym_envs = [gymnasium.make("CartPole-v1") for _ in seeds]
    gym_obs = np.stack([g.reset(seed=s)[0] for g, s in zip(gym_envs, seeds, strict=True)])
    env = CartPoleVectorEnv(len(seeds))
    obs = env.reset(every(len(seeds)), seeds)
    for step in range(1, 501):
        actions = balance(obs)
        obs, rewards, terminated, truncated = env.step(every(len(seeds)), actions)
        for row, gym_env in enumerate(gym_envs):
            gym_obs, gym_reward, gym_terminated, gym_truncated, _ = gym_env.step(int(actions[row]))
            assert np.array_equal(obs[row], gym_obs)
            assert (rewards[row], terminated[row]) == (gym_reward, gym_terminated)
            assert truncated[row] == gym_truncated == (step == 500)
    assert not terminated.any()
    assert [s["step_count"] for s in env.state(every(len(seeds)))] == [500] * len(seeds)


def test_truncated_stays_true_until_reset() -> None:
    env = CartPoleVectorEnv(1, max_episode_steps=3)
    obs = env.reset(every(1), [3])
    flags = []
    for _ in range(5):
        obs, _, _, truncated = env.step(every(1), balance(obs))
        flags.append(bool(truncated[0]))
    assert flags == [False, False, True, True, True]
    obs = env.reset(every(1), [None])
    assert not env.step(every(1), balance(obs))[3][0]


def test_ragged_subsets_touch_only_their_rows() -> None:
    """Rows answer in the order of ``indices``, and every other row is left exactly as it was."""
    n = 10
    env = CartPoleVectorEnv(n)
    alone = [CartPoleVectorEnv(1) for _ in range(n)]
    env.reset(every(n), list(range(n)))
    for seed, single in enumerate(alone):
        single.reset(every(1), [seed])
    rng = np.random.default_rng(3)
    for _ in range(30):
        indices = rng.permutation(n)[: rng.integers(1, n + 1)].astype(np.intp)
        before = env.states.copy()
        counts = [s["step_count"] for s in env.state(every(n))]
        actions = rng.integers(0, 2, len(indices))
        obs, rewards, terminated, truncated = env.step(indices, actions)
        assert obs.shape == (len(indices), 4)
        for row, index in enumerate(indices.tolist()):
            expected = alone[index].step(every(1), actions[row : row + 1])
            assert np.array_equal(obs[row], expected[0][0])
            assert (rewards[row], terminated[row], truncated[row]) == (
                expected[1][0],
                expected[2][0],
                expected[3][0],
            )
        untouched = np.setdiff1d(every(n), indices)
        assert np.array_equal(env.states[untouched], before[untouched])
        after = [s["step_count"] for s in env.state(every(n))]
        assert [after[i] - counts[i] for i in range(n)] == [
            int(i in indices.tolist()) for i in range(n)
        ]


def test_ragged_reset_touches_only_its_rows() -> None:
    env = CartPoleVectorEnv(6)
    env.reset(every(6), [None] * 6)
    env.step(every(6), np.ones(6, np.int64))
    before = env.state(every(6))
    obs = env.reset(np.array([4, 1], np.intp), [11, 12])
    after = env.state(every(6))
    for index in (0, 2, 3, 5):
        assert after[index] == before[index]
    for row, (index, seed) in enumerate([(4, 11), (1, 12)]):
        assert np.array_equal(obs[row], gymnasium.make("CartPole-v1").reset(seed=seed)[0])
        assert after[index]["step_count"] == 0
        assert after[index]["episode_id"] != before[index]["episode_id"]


def test_full_batch_of_8192() -> None:
    n = 8192
    env = CartPoleVectorEnv(n)
    obs = env.reset(every(n), list(range(n)))
    assert obs.shape == (n, 4)
    obs, rewards, terminated, truncated = env.step(every(n), np.zeros(n, np.int64))
    assert obs.shape == (n, 4)
    assert obs.dtype == np.float32
    assert rewards.shape == terminated.shape == truncated.shape == (n,)
    assert rewards.dtype == np.float32
    assert terminated.dtype == truncated.dtype == np.bool_
    assert np.all(rewards == 1.0)
    assert env.observation_space.contains_batch(obs).all()


def test_invalid_actions_name_their_indices_and_change_nothing() -> None:
    env = CartPoleVectorEnv(5)
    env.reset(every(5), [None] * 5)
    before = env.state(every(5))
    with pytest.raises(ValueError, match=r"indices \[3, 0\] got \[2, -1\]"):
        env.step(np.array([3, 1, 0], np.intp), np.array([2, 1, -1]))
    with pytest.raises(ValueError, match="for 2 indices"):
        env.step(np.array([0, 1], np.intp), np.array([1]))
    assert env.state(every(5)) == before


def test_step_before_reset_raises_needs_reset() -> None:
    env = CartPoleVectorEnv(4)
    env.reset(np.array([1], np.intp), [None])
    with pytest.raises(NeedsReset, match=r"\[0, 3\]"):
        env.step(np.array([0, 1, 3], np.intp), np.array([0, 1, 0]))
    assert env.state(np.array([1], np.intp))[0]["step_count"] == 0


@pytest.mark.parametrize(
    ("seeds", "error", "match"),
    [
        ([-1], ValueError, "non-negative"),
        ([1.5], TypeError, "float"),
        ([1, 2], ValueError, "2 seeds"),
    ],
)
def test_bad_seeds(seeds: list[object], error: type[Exception], match: str) -> None:
    env = CartPoleVectorEnv(2)
    with pytest.raises(error, match=match):
        env.reset(np.array([0], np.intp), seeds)  # type: ignore[arg-type]


def test_state_dicts() -> None:
    env = CartPoleVectorEnv(3)
    assert env.state(every(3))[0] == {
        "episode_id": None,
        "step_count": 0,
        "x": 0.0,
        "x_dot": 0.0,
        "theta": 0.0,
        "theta_dot": 0.0,
    }
    env.reset(every(3), [0, 1, 2])
    env.step(np.array([2], np.intp), np.array([1]))
    states = env.state(np.array([2, 0], np.intp))
    assert [s["step_count"] for s in states] == [1, 0]
    for state, index in zip(states, (2, 0), strict=True):
        assert set(state) == {"episode_id", "step_count", "x", "x_dot", "theta", "theta_dot"}
        assert uuid.UUID(hex=state["episode_id"]).version == 4
        values = [state[key] for key in ("x", "x_dot", "theta", "theta_dot")]
        assert all(type(value) is float for value in values)
        assert values == env.states[index].tolist()
    ids = {s["episode_id"] for s in env.state(every(3))}
    env.reset(every(3), [0, 1, 2])
    assert len(ids | {s["episode_id"] for s in env.state(every(3))}) == 6
