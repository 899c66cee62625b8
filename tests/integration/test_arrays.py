"""Array envs end to end: one numpy array of actions in, one array of observations out."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from openenv_zmq import AsyncBatchClient, BatchClient
from openenv_zmq.errors import ActionValidationError, EnvNotFound
from tests.processes import Processes

COUNTER = "tests.unit.worker_envs:CounterEnvs"


def test_gymnasium_env_by_name_follows_its_spaces(procs: Processes) -> None:
    broker = procs.broker(workers=2, envs=("gym:CartPole-v1",))
    with BatchClient(broker.frontend) as client:
        envs = client.make("gym:CartPole-v1", num_envs=64, autoreset="next_step")
        r = envs.reset(seed=0)
        assert isinstance(r.observations, np.ndarray)
        assert r.observations.shape == (64, 4)
        assert r.observations.dtype == np.float32
        # Gymnasium's own seeding: env i of the call got seed i
        import gymnasium

        expected, _ = gymnasium.make("CartPole-v1").reset(seed=5)
        np.testing.assert_array_equal(r.observations[5], expected)
        rng = np.random.default_rng(0)
        ended = np.zeros(64, bool)
        for _ in range(40):
            r = envs.step(rng.integers(0, 2, 64))
            assert not r.errors
            # next_step: a step after an episode ended resets that env and earns nothing
            np.testing.assert_array_equal(r.rewards, np.where(ended, 0.0, 1.0))
            ended = r.dones
        assert ended.any() or r.rewards.min() == 0
        r = envs.step(np.full(4, 7), env_ids=envs.env_ids[:4])
        assert {type(e) for e in r.errors.values()} == {ActionValidationError}
        # not truncated to [0, 1] on the way: refused before anything is sent
        before = envs.state(env_ids=envs.env_ids[:2])
        with pytest.raises(ActionValidationError, match=r"0\.5") as refused:
            envs.step(np.array([0.5, 1.7]), env_ids=envs.env_ids[:2])
        assert refused.value.env_id == envs.env_ids[0]
        assert envs.state(env_ids=envs.env_ids[:2]) == before
        assert not envs.step(np.array([0.0, 1.0]), env_ids=envs.env_ids[:2]).errors
        assert all(s.step_count > 0 for s in envs.state(env_ids=envs.env_ids[4:6]))


def test_array_env_subsets_send_recv_and_same_step_autoreset(procs: Processes) -> None:
    broker = procs.broker(workers=2, envs=(COUNTER,))
    with BatchClient(broker.frontend) as client:
        envs = client.make(COUNTER, num_envs=8, autoreset="same_step", limit=4)
        envs.reset(seed=list(range(8)))
        r = envs.step(np.full(8, 2))
        assert r.observations[:, 0].tolist() == [2] * 8
        ids = envs.env_ids[[6, 1]]
        r = envs.step([2, 1], env_ids=ids)
        assert r.env_ids.tolist() == ids.tolist()
        assert r.terminated.tolist() == [True, False]
        assert r.observations.tolist() == [[0, -1], [3, 1]]  # env 6 was reset (seed None)
        assert r.final_observations.tolist() == [[4, 6], [0, 0]]
        envs.send(np.zeros(8, np.int64))
        rows = 0
        while rows < 8:
            part = envs.recv(timeout=10)
            assert isinstance(part.observations, np.ndarray)
            rows += len(part)
        assert rows == 8


def test_async_client_steps_arrays(procs: Processes) -> None:
    broker = procs.broker(workers=1, envs=(COUNTER,))

    async def main() -> None:
        async with AsyncBatchClient(broker.frontend, env=COUNTER, num_envs=4, limit=100) as c:
            await c.reset()
            r = await c.step(np.array([0, 1, 2, 1]))
            assert r.observations[:, 0].tolist() == [0, 1, 2, 1]
            # one worker's answer is returned without a copy, still as writable arrays
            r.observations[0, 0] = 9
            r.rewards[0] = 1.0
            r.terminated[0] = True
            assert r.dones[0]

    asyncio.run(main())


def test_unknown_gymnasium_id_is_refused() -> None:
    from openenv_zmq.registry import resolve_env

    with pytest.raises(EnvNotFound, match="Gymnasium has no env 'NoSuchEnv-v0'"):
        resolve_env("gym:NoSuchEnv-v0")
