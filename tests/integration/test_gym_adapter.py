"""``openenv_zmq.gym``: a Gymnasium ``VectorEnv`` over a running cluster, held to Gymnasium's own
``SyncVectorEnv`` step for step (the ``cartpole`` env is bit for bit ``CartPole-v1``)."""

from __future__ import annotations

import string
from collections.abc import Iterator
from typing import Any

import gymnasium
import numpy as np
import pytest
from echo_env.models import EchoObservation
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.wrappers.vector import RecordEpisodeStatistics

from openenv_zmq import BatchClient
from openenv_zmq.errors import ActionValidationError, ClientError, NoWorkerAvailable
from openenv_zmq.gym import ZmqVectorEnv, make_vec
from tests.processes import Broker, running

NUM_ENVS = 8
STEPS = 250


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker for the module: workers importing Gymnasium take seconds to start."""
    with running(tmp_path_factory.mktemp("procs")) as procs:
        yield procs.broker(workers=2, envs=("cartpole", "echo", "gym:CartPole-v1"))


def _reference(mode: AutoresetMode) -> Any:
    envs = SyncVectorEnv([lambda: gymnasium.make("CartPole-v1")] * NUM_ENVS, autoreset_mode=mode)
    return RecordEpisodeStatistics(envs)


@pytest.mark.parametrize("mode", list(AutoresetMode))
def test_steps_as_gymnasiums_sync_vector_env(broker: Broker, mode: AutoresetMode) -> None:
    ours = RecordEpisodeStatistics(
        make_vec(broker.frontend, "cartpole", NUM_ENVS, autoreset_mode=mode)
    )
    theirs = _reference(mode)
    try:
        assert ours.metadata["autoreset_mode"] is mode
        assert ours.num_envs == NUM_ENVS
        assert ours.single_observation_space == theirs.single_observation_space
        assert ours.single_action_space == theirs.single_action_space
        assert ours.observation_space == theirs.observation_space
        assert ours.action_space == theirs.action_space
        obs, info = ours.reset(seed=3)
        expected, _ = theirs.reset(seed=3)
        np.testing.assert_array_equal(obs, expected)
        assert info == {}
        rng = np.random.default_rng(0)
        episodes = 0
        lengths = np.zeros(NUM_ENVS, np.int64)
        for _ in range(STEPS):
            actions = rng.integers(0, 2, NUM_ENVS)
            got = ours.step(actions)
            want = theirs.step(actions)
            for mine, reference in zip(got[:4], want[:4], strict=True):
                np.testing.assert_array_equal(mine, reference)
                assert mine.dtype == reference.dtype
            infos, expected_infos = got[4], want[4]
            assert infos.keys() == expected_infos.keys()
            lengths += 1
            if "episode" in infos:
                ended = infos["_episode"]
                episodes += int(ended.sum())
                np.testing.assert_array_equal(ended, expected_infos["_episode"])
                np.testing.assert_array_equal(infos["episode"]["l"][ended], lengths[ended])
                if mode is not AutoresetMode.DISABLED:
                    # (Gymnasium's SyncVectorEnv pops reset_mask from the options it is given,
                    # so its RecordEpisodeStatistics restarts every count on a masked reset)
                    np.testing.assert_array_equal(
                        infos["episode"]["r"], expected_infos["episode"]["r"]
                    )
                lengths[ended] = 0
            if mode is AutoresetMode.NEXT_STEP:
                lengths[got[2] | got[3]] = -1  # the resetting step counts for no episode
            if mode is AutoresetMode.SAME_STEP and "final_obs" in infos:
                np.testing.assert_array_equal(infos["_final_obs"], expected_infos["_final_obs"])
                for row in np.flatnonzero(infos["_final_obs"]):
                    np.testing.assert_array_equal(
                        infos["final_obs"][row], expected_infos["final_obs"][row]
                    )
            ended = got[2] | got[3]
            if mode is AutoresetMode.DISABLED and ended.any():
                mask = {"reset_mask": ended}
                obs, _ = ours.reset(options=dict(mask))
                expected, _ = theirs.reset(options=dict(mask))
                np.testing.assert_array_equal(obs, expected)
        assert episodes > NUM_ENVS  # every mode saw episodes end and start again
    finally:
        ours.close()
        theirs.close()


def test_gymnasium_env_by_id_and_an_existing_group(broker: Broker) -> None:
    with BatchClient(broker.frontend) as client:
        envs = make_vec(client, "gym:CartPole-v1", 4, autoreset_mode="SameStep")
        obs, _ = envs.reset(seed=[5, None, 7, None])
        np.testing.assert_array_equal(obs[0], gymnasium.make("CartPole-v1").reset(seed=5)[0])
        np.testing.assert_array_equal(obs[2], gymnasium.make("CartPole-v1").reset(seed=7)[0])
        envs.close()
        assert envs.closed and envs.group.closed
        # the client stays the caller's: a group it made wraps too, and closing keeps the client
        group = client.make("cartpole", 2, autoreset="next_step")
        wrapped = ZmqVectorEnv(group)
        assert wrapped.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
        assert wrapped.reset(seed=0)[0].shape == (2, 4)
        wrapped.close()
        assert group.closed
        assert client.make("cartpole", 1).reset(seed=0).observations.shape == (1, 4)


def test_structured_env_gives_models_and_names_a_failing_env(broker: Broker) -> None:
    envs = make_vec(broker.frontend, "echo", 3)
    try:
        assert envs.single_action_space == spaces.Dict(
            {"message": spaces.Text(65_536, min_length=0, charset=string.printable)}
        )
        observation_space = envs.single_observation_space
        assert isinstance(observation_space, spaces.Dict)
        assert set(observation_space.keys()) == {"echoed_message", "message_length"}
        assert envs.observation_space == spaces.Tuple([observation_space] * 3)
        obs, _ = envs.reset(seed=0)
        assert isinstance(obs, tuple) and all(isinstance(o, EchoObservation) for o in obs)
        obs, rewards, terminated, truncated, _ = envs.step([{"message": m} for m in "abc"])
        assert [o.echoed_message for o in obs] == ["a", "b", "c"]
        assert rewards.dtype == np.float64 and not terminated.any() and not truncated.any()
        env_id = envs.group.env_ids[1]
        with pytest.raises(ActionValidationError, match=rf"^env 1 \(env id {env_id}\): "):
            envs.step([{"message": "x"}, {"text": "y"}, {"message": "z"}])
        # the other envs carried on, and so does the failed one
        obs, *_ = envs.step([{"message": m} for m in ("d", "e", "f")])
        assert [o.echoed_message for o in obs] == ["d", "e", "f"]
        obs, _ = envs.reset(options={"reset_mask": np.array([False, True, False])})
        assert [o.echoed_message for o in obs] == ["d", "Echo environment ready!", "f"]
    finally:
        envs.close()


def test_bad_arguments_are_refused_by_name(broker: Broker) -> None:
    with pytest.raises(ClientError, match="autoreset_mode must be one of 'NextStep'"):
        make_vec(broker.frontend, "cartpole", 2, autoreset_mode="sometimes")
    with pytest.raises(ClientError, match="autoreset_mode="):
        make_vec(broker.frontend, "cartpole", 2, autoreset="next_step")
    # a group that cannot be made leaves no client behind (the fixture checks the sockets)
    with pytest.raises(NoWorkerAvailable):
        make_vec(broker.frontend, "gym:MountainCar-v0", 2)
    with make_vec(broker.frontend, "cartpole", 2) as envs:
        with pytest.raises(ClientError, match="without reset_mask first"):
            envs.reset(options={"reset_mask": np.ones(2, bool)})
        envs.reset(seed=0)
        with pytest.raises(ClientError, match="bool array of shape"):
            envs.reset(options={"reset_mask": [True, False]})
        with pytest.raises(ClientError, match="marks no env"):
            envs.reset(options={"reset_mask": np.zeros(2, bool)})
        with pytest.raises(ClientError, match="3 seeds for 2 envs"):
            envs.reset(seed=[1, 2, 3])
        assert envs.step(np.array([0, 1]))[0].shape == (2, 4)
