"""``openenv_zmq.sb3``: an SB3 ``VecEnv`` over a running cluster, held to SB3's ``DummyVecEnv`` of
Gymnasium's ``CartPole-v1`` step for step, and trained on by SB3's PPO.

Stable-Baselines3 (and torch) are in the dev extra; CI installs a CPU-only torch first.
"""

from __future__ import annotations

from collections.abc import Iterator

import gymnasium
import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

from openenv_zmq import BatchClient
from openenv_zmq.errors import ClientError
from openenv_zmq.sb3 import ZmqVecEnv, make_vec_env
from tests.processes import Broker, running

NUM_ENVS = 8


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with running(tmp_path_factory.mktemp("procs")) as procs:
        yield procs.broker(workers=2, envs=("cartpole", "echo"))


def test_steps_as_sb3s_dummy_vec_env(broker: Broker) -> None:
    ours = make_vec_env(broker.frontend, "cartpole", NUM_ENVS)
    theirs = DummyVecEnv([lambda: gymnasium.make("CartPole-v1")] * NUM_ENVS)
    try:
        assert ours.observation_space == theirs.observation_space
        assert ours.action_space == theirs.action_space
        assert ours.seed(11) == theirs.seed(11)
        np.testing.assert_array_equal(ours.reset(), theirs.reset())
        rng = np.random.default_rng(1)
        ended = 0
        for _ in range(200):
            actions = rng.integers(0, 2, NUM_ENVS)
            obs, rewards, dones, infos = ours.step(actions)
            want_obs, want_rewards, want_dones, want_infos = theirs.step(actions)
            np.testing.assert_array_equal(obs, want_obs)
            np.testing.assert_array_equal(rewards, want_rewards)
            assert rewards.dtype == want_rewards.dtype
            np.testing.assert_array_equal(dones, want_dones)
            for info, want in zip(infos, want_infos, strict=True):
                assert info.keys() == want.keys()
                assert info["TimeLimit.truncated"] == want["TimeLimit.truncated"]
                if "terminal_observation" in want:
                    np.testing.assert_array_equal(
                        info["terminal_observation"], want["terminal_observation"]
                    )
            ended += int(dones.sum())
        assert ended > NUM_ENVS
    finally:
        ours.close()
        theirs.close()


def test_the_vec_env_methods_reach_the_remote_envs(broker: Broker) -> None:
    with BatchClient(broker.frontend) as client:
        group = client.make("cartpole", 3, autoreset="same_step")
        venv = ZmqVecEnv(group)
        venv.reset()
        venv.step(np.array([0, 1, 0]))
        assert venv.render_mode is None
        assert venv.get_attr("step_count") == [1, 1, 1]
        assert venv.has_attr("episode_id") and not venv.has_attr("learning_rate")
        with pytest.raises(ClientError, match="cannot be set"):
            venv.set_attr("gravity", 1.0)
        [observation] = venv.env_method("reset", indices=[1])
        assert observation.shape == (4,)
        assert venv.get_attr("step_count", indices=[0, 1]) == [1, 0]
        assert [s.step_count for s in venv.env_method("state")] == [1, 0, 1]
        with pytest.raises(ClientError, match="reset, state"):
            venv.env_method("render")
        assert venv.env_is_wrapped(gymnasium.Wrapper) == [False] * 3
        venv.close()
        assert group.closed
        # a group of another autoreset mode, or of a structured env, is refused by name
        with pytest.raises(ClientError, match="autoreset='same_step', not 'next_step'"):
            ZmqVecEnv(client.make("cartpole", 1, autoreset="next_step"))
        with pytest.raises(ClientError, match="'echo' is not an array env"):
            ZmqVecEnv(client.make("echo", 1, autoreset="same_step"))
        with pytest.raises(ClientError, match="drop autoreset="):
            make_vec_env(client, "cartpole", 1, autoreset="same_step")


def test_ppo_trains_on_it(broker: Broker) -> None:
    venv = VecMonitor(make_vec_env(broker.frontend, "cartpole", 4))
    try:
        model = PPO("MlpPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
        model.learn(total_timesteps=256)
        assert model.num_timesteps == 256
        assert model.ep_info_buffer  # VecMonitor saw whole episodes end
    finally:
        venv.close()
