"""Array spaces, and the Gymnasium adapter used in-process (no sockets)."""

from __future__ import annotations

import string

import gymnasium
import msgpack
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode as GymAutoreset
from pydantic import Field

from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.errors import ClientError, EnvNotFound
from openenv_zmq.gym import gym_space, model_space, runtime_autoreset
from openenv_zmq.registry import resolve_env
from openenv_zmq.spaces import Box, Discrete, batch_shape, space_from_wire, space_to_wire
from openenv_zmq.types import Observation
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


def test_spaces_cross_the_wire_whole() -> None:
    wide = Box(np.array([-1.0, 0.0]), np.array([1.0, np.inf]), (2,), np.float64)
    pixels = Box(0, 255, (84, 84, 4), np.uint8)
    for space in (wide, pixels, Discrete(5, start=2)):
        wire = msgpack.unpackb(msgpack.packb(space_to_wire(space)))
        again = space_from_wire(wire)
        assert type(again) is type(space)
        assert again.shape == space.shape and again.dtype == space.dtype
        if isinstance(space, Box):
            assert isinstance(again, Box)
            np.testing.assert_array_equal(again.low, space.low)
            np.testing.assert_array_equal(again.high, space.high)
        else:
            assert again == space
    # one bound for a uniform box, not 28,224 of them
    assert space_to_wire(pixels)["low"] == 0 and space_to_wire(pixels)["high"] == 255
    # a worker that sends only the layout: the client knows the arrays, not the space
    assert space_from_wire({"dtype": "<f4", "shape": [4]}) is None


def test_gymnasium_names_of_autoreset_modes() -> None:
    assert runtime_autoreset(GymAutoreset.SAME_STEP) is AutoresetMode.SAME_STEP
    assert runtime_autoreset("NextStep") is AutoresetMode.NEXT_STEP
    assert runtime_autoreset("disabled") is AutoresetMode.DISABLED
    with pytest.raises(ClientError, match="'NextStep', 'SameStep', 'Disabled'; got 'never'"):
        runtime_autoreset("never")


def test_model_spaces_where_every_field_maps() -> None:
    class Reading(Observation):
        label: str = Field(max_length=8)
        count: int = Field(ge=0)
        level: float = Field(le=1.0)
        on: bool

    class Anything(Observation):
        values: list[float]

    described = model_space(Reading)
    assert described == spaces.Dict(
        {
            "label": spaces.Text(8, min_length=0, charset=string.printable),
            "count": spaces.Box(0, np.iinfo(np.int64).max, (), np.int64),
            "level": spaces.Box(-np.inf, 1.0, (), np.float64),
            "on": spaces.Discrete(2),
        }
    )
    assert model_space(Anything) is None
    assert model_space(None) is None
    assert gym_space(Discrete(3, start=1)) == spaces.Discrete(3, start=1)
