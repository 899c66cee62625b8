"""The trainer adapters, each driven by a fake trainer loop that calls it as the trainer does,
against a real broker and echo worker on loopback (one broker for the module)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from echo_env import EchoAction

from bench.faults.cluster import status
from openenv_zmq import SessionPool
from openenv_zmq.errors import ActionValidationError, BatchSizeMismatch
from openenv_zmq.trainers import EnvPool, SkyRLTextEnv, TRLEnvironment
from openenv_zmq.types import StepResult
from tests.processes import running

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running(Path(tmp_path_factory.mktemp("trainers"))) as processes:
        yield processes.broker(workers=1).frontend


def step_requests(broker: str) -> int:
    """STEP requests the broker forwarded so far (one per batch: one worker)."""
    count: int = status(broker)["metrics"]["requests"]["step"]
    return count


def test_trl_environment_factory_in_a_fake_grpo_loop(broker: str) -> None:
    generation_batch = 4

    with SessionPool(broker, env="echo", size=generation_batch) as pool:

        class EchoTools(TRLEnvironment):
            def echo(self, message: str) -> str:
                """Echo the message back from the environment.

                Args:
                    message: The message to echo.
                """
                return str(self._step(EchoAction(message=message)).observation.echoed_message)

        EchoTools.pool = pool

        # GRPOTrainer: one object per rollout, made once; every public method but reset is a tool
        environments = [EchoTools() for _ in range(generation_batch)]
        tools = [
            {name for name, _ in inspect.getmembers(env, inspect.ismethod) if name[0] != "_"}
            - {"reset"}
            for env in environments
        ]
        assert tools == [{"echo"}] * generation_batch
        assert "Args:" in (EchoTools.echo.__doc__ or "")

        def reward_func(environments: list[EchoTools], **kwargs: Any) -> list[float]:
            return [env.reward for env in environments]

        for training_step in range(2):
            rows = [
                {"prompt": [{"role": "user", "content": "echo it"}], "seed": training_step + i}
                for i in range(generation_batch)
            ]
            for env, row in zip(environments, rows, strict=True):
                assert env.reset(**row) is None
                assert env.reward == 0.0 and env.done is False
            # the model's tool calls, one rollout after another as GRPOTrainer makes them
            for i, env in enumerate(environments):
                assert env.echo(message="x" * (i + 1)) == "x" * (i + 1)
            assert reward_func(environments) == pytest.approx([0.1, 0.2, 0.3, 0.4])
        assert pool.in_use == generation_batch  # TRL keeps its objects, and they their sessions

        # a failing step raises in its tool (TRL hands the message to the model); others go on
        with pytest.raises(ActionValidationError):
            environments[0]._step({"message": 5})
        assert environments[1].echo(message="ok") == "ok"


class EchoText(SkyRLTextEnv):
    """The model's output is the message; the model is told the echo."""

    def _action(self, text: str) -> Any:
        return EchoAction(message=text)

    def _render(self, result: StepResult[Any]) -> str:
        return str(result.observation.echoed_message)


def test_skyrl_text_env_in_a_fake_generator_loop(broker: str) -> None:
    trajectories, turns, sessions = 8, 3, 4

    def agent_loop(i: int) -> list[float]:
        # SkyRLGymGenerator: a new env per trajectory, init, step until done, close
        env = EchoText(env_config={}, extras={"max_turns": turns})
        prompt = [{"role": "user", "content": f"say {i}"}]
        chat, metadata = env.init(prompt)
        assert (chat, metadata) == (prompt, {})
        rewards, done = [], False
        while not done:
            output = env.step("y" * (i + 1))
            assert set(output) == {"observations", "reward", "done", "metadata"}
            done = output["done"]
            expected = [] if done else [{"role": "user", "content": "y" * (i + 1)}]
            assert output["observations"] == expected
            rewards.append(output["reward"])
        assert env.get_metrics() == {}
        env.close()
        return rewards

    before = step_requests(broker)
    with SessionPool(broker, env="echo", size=sessions) as pool:
        EchoText.pool = pool
        # SkyRL steps its envs from a thread pool: more trajectories than sessions here, so
        # each waits for a session another trajectory gives back
        with ThreadPoolExecutor(trajectories) as executor:
            rewards = list(executor.map(agent_loop, range(trajectories)))
        assert pool.in_use == 0
    assert rewards == [pytest.approx([(i + 1) * 0.1] * turns) for i in range(trajectories)]
    assert step_requests(broker) - before < trajectories * turns  # steps shared batches


def test_rfc004_env_pool_steps_the_stack_as_one_batch(broker: str) -> None:
    n = 8

    async def train() -> None:
        async with EnvPool("echo", n=n, address=broker) as envs:
            assert len(envs) == n
            first = await envs.reset_batch(seed=3)
            assert [o.echoed_message for o in first] == ["Echo environment ready!"] * n
            for _ in range(2):  # the RFC's loop: generate actions, step the stack, read rewards
                before = step_requests(broker)
                actions = [EchoAction(message="z" * i) for i in range(n)]
                observations = await envs.step_batch(actions)
                assert step_requests(broker) - before == 1
                rewards = [obs.reward for obs in observations]
                assert rewards == pytest.approx([i * 0.1 for i in range(n)])
            with pytest.raises(BatchSizeMismatch):
                await envs.step_batch(actions[:-1])
            with pytest.raises(ActionValidationError):
                await envs.step_batch([{"message": 5}, *actions[1:]])

    asyncio.run(asyncio.wait_for(train(), 60))
