"""The classic echo env behaves exactly as OpenEnv's seed describes (OPENENV_PROTOCOL.md)."""

from __future__ import annotations

import uuid

import pytest
from echo_env import EchoAction, EchoObservation
from echo_env.server import EchoEnvironment
from pydantic import ValidationError

from openenv_zmq.registry import env_types
from openenv_zmq.types import State

WIRE_EXCLUDE = {"reward", "done", "metadata"}
"""What OpenEnv strips from an observation before it sends it."""


@pytest.fixture
def env() -> EchoEnvironment:
    return EchoEnvironment()


def test_package_exports_the_models() -> None:
    import echo_env.models

    assert EchoAction is echo_env.models.EchoAction
    assert EchoObservation is echo_env.models.EchoObservation


def test_reset(env: EchoEnvironment) -> None:
    obs = env.reset(seed=1)
    assert obs.echoed_message == "Echo environment ready!"
    assert obs.message_length == 0
    assert obs.reward == 0.0
    assert obs.done is False
    assert obs.model_dump(exclude=WIRE_EXCLUDE) == {
        "echoed_message": "Echo environment ready!",
        "message_length": 0,
    }


@pytest.mark.parametrize("message", ["Hello", "", "héllo wörld", "x" * 1000, " \n\t"])
def test_step_echoes(env: EchoEnvironment, message: str) -> None:
    env.reset()
    obs = env.step(EchoAction(message=message))
    assert obs.echoed_message == message
    assert obs.message_length == len(message)
    assert obs.reward == len(message) * 0.1
    assert obs.done is False


def test_step_matches_the_seed_transcript(env: EchoEnvironment) -> None:
    env.reset(seed=1)
    obs = env.step(EchoAction(message="Hello"))
    assert obs.model_dump(exclude=WIRE_EXCLUDE) == {"echoed_message": "Hello", "message_length": 5}
    assert (obs.reward, obs.done) == (0.5, False)
    assert env.state.model_dump() == {"episode_id": env.state.episode_id, "step_count": 1}


def test_step_count_counts_steps_and_reset_clears_it(env: EchoEnvironment) -> None:
    env.reset()
    assert env.state.step_count == 0
    for expected in range(1, 4):
        env.step(EchoAction(message="m"))
        assert env.state.step_count == expected
    env.reset()
    assert env.state.step_count == 0


def test_episode_ends_only_by_reset(env: EchoEnvironment) -> None:
    env.reset()
    assert not any(env.step(EchoAction(message="m" * i)).done for i in range(50))


def test_given_episode_id_is_kept(env: EchoEnvironment) -> None:
    env.reset(episode_id="episode-42")
    env.step(EchoAction(message="m"))
    assert env.state.episode_id == "episode-42"


def test_episode_id_is_a_fresh_uuid_otherwise(env: EchoEnvironment) -> None:
    seen = set()
    for _ in range(3):
        env.reset()
        episode_id = env.state.episode_id
        assert episode_id is not None
        assert str(uuid.UUID(episode_id)) == episode_id
        seen.add(episode_id)
    assert len(seen) == 3
    assert EchoEnvironment().state.episode_id != EchoEnvironment().state.episode_id


def test_reset_takes_and_ignores_extra_kwargs(env: EchoEnvironment) -> None:
    obs = env.reset(seed=7, episode_id="e", difficulty="hard")
    assert obs.echoed_message == "Echo environment ready!"
    assert env.state == State(episode_id="e", step_count=0)


def test_action_refuses_extra_fields() -> None:
    with pytest.raises(ValidationError, match=r"extra_forbidden|Extra inputs are not permitted"):
        EchoAction.model_validate({"message": "hi", "volume": 11})


def test_action_needs_a_message() -> None:
    with pytest.raises(ValidationError, match=r"message\n\s+Field required"):
        EchoAction.model_validate({})


def test_action_message_must_be_a_string() -> None:
    with pytest.raises(ValidationError, match=r"message\n\s+Input should be a valid string"):
        EchoAction.model_validate({"message": 5})


def test_action_carries_metadata() -> None:
    action = EchoAction.model_validate({"message": "hi", "metadata": {"turn": 2}})
    assert action.model_dump() == {"message": "hi", "metadata": {"turn": 2}}
    assert EchoAction(message="hi").metadata == {}


def test_observation_refuses_extra_fields() -> None:
    with pytest.raises(ValidationError, match=r"Extra inputs are not permitted"):
        EchoObservation.model_validate({"echoed_message": "a", "colour": "red"})


def test_env_speaks_the_echo_models() -> None:
    types = env_types(EchoEnvironment)
    assert (types.action, types.observation, types.state) == (EchoAction, EchoObservation, State)
