"""Array spaces, and the Gymnasium adapter used in-process (no sockets)."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from openenv_zmq.errors import EnvNotFound
from openenv_zmq.registry import resolve_env
from openenv_zmq.spaces import Box, Discrete, batch_shape
from openenv_zmq.worker.gymnasium import gymnasium_env


def test_box_broadcasts_bounds_and_checks_rows() -> None:
    box = Box(-1.0, [1.0, 2.0])
    assert box.shape == (2,)
    assert box.dtype == np.float32
    assert box.contains_batch(np.array([[0, 2], [0, 2.5], [-1, -1]])).tolist() == [
        True,
        False,
        True,
    ]
    assert batch_shape(box, 5) == (5, 2)


def test_discrete_counts_from_its_start() -> None:
    space = Discrete(3, start=-1)
    assert space.shape == ()
    assert space.dtype == np.int64
    assert space.contains_batch(np.array([-2, -1, 0, 1, 2])).tolist() == [
        False,
        True,
        True,
        True,
        False,
    ]


def test_gym_names_resolve_to_one_cached_class() -> None:
    cls = resolve_env("gym:CartPole-v1")
    assert cls is gymnasium_env("gym:CartPole-v1")
    assert cls.gym_id == "CartPole-v1"


def test_gym_envs_step_like_gymnasium_by_index() -> None:
    envs = gymnasium_env("gym:CartPole-v1")(num_envs=3)
    assert envs.observation_space.shape == (4,)
    assert envs.action_space == Discrete(2)
    first = envs.reset(np.array([2, 0]), [11, 12])
    reference = gymnasium.make("CartPole-v1")
    np.testing.assert_array_equal(first[0], reference.reset(seed=11)[0])
    obs, rewards, terminated, truncated = envs.step(np.array([2]), np.array([1]))
    np.testing.assert_array_equal(obs[0], reference.step(1)[0])
    assert rewards.tolist() == [1.0]
    assert terminated.dtype == np.bool_
    assert truncated.tolist() == [False]
    assert [s["step_count"] for s in envs.state(np.array([2, 0]))] == [1, 0]
    envs.close()


def test_gym_spaces_it_cannot_carry_are_refused() -> None:
    with pytest.raises(EnvNotFound, match="Tuple is not supported"):
        gymnasium_env("gym:Blackjack-v1")(num_envs=1)
