"""SkyRL-Gym's ``BaseTextEnv``: text in, chat messages out, one object per trajectory.

SkyRL's generator makes the env with ``skyrl_gym.make(name, env_config=..., extras=...)``,
calls ``init(prompt)``, then ``step(model_output)`` until ``done``, then ``close()`` (from a
thread pool when ``max_env_workers`` is set, so many trajectories step at once).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, TypedDict

from openenv_zmq.trainers.held import PooledEnv
from openenv_zmq.types import StepResult

Messages = list[dict[str, str]]
"""A conversation in OpenAI's message format."""


class TextEnvStepOutput(TypedDict):
    """SkyRL's ``BaseTextEnvStepOutput``."""

    observations: Messages
    reward: float
    done: bool
    metadata: dict[str, Any]


class SkyRLTextEnv(PooledEnv, ABC):
    """A SkyRL ``BaseTextEnv`` whose trajectory is one pooled session, from ``init`` to ``close``.

    Set ``pool`` and write two methods: ``_action(text)``, the env's action for the model's
    output, and ``_render(result)``, the text the model sees of a step's result. Register the
    class with ``skyrl_gym.envs.register(id=..., entry_point="module:Class")``. An episode ends
    when the env says it is done or after ``extras["max_turns"]`` steps (SkyRL's generator
    sets it; 1 without it).
    """

    def __init__(self, env_config: Any = None, extras: dict[str, Any] | None = None) -> None:
        # SkyRL passes its config for the env class; here the class's pool is the config.
        super().__init__()
        self.max_turns = int((extras or {}).get("max_turns", 1))
        self.turns = 0

    def init(self, prompt: Messages) -> tuple[Messages, dict[str, Any]]:
        """Take a session and start its episode; the prompt goes to the model unchanged."""
        self._reset()
        return prompt, {}

    def step(self, action: str) -> TextEnvStepOutput:
        """Step the env with the action read from the model's output; its result is the next
        user message, none once the episode is over."""
        self.turns += 1
        result = self._step(self._action(action))
        done = result.done or self.turns >= self.max_turns
        observations = [] if done else [{"role": "user", "content": self._render(result)}]
        return {"observations": observations, "reward": self.reward, "done": done, "metadata": {}}

    def close(self) -> None:
        """Give the session back to the pool."""
        self._release()

    def get_metrics(self) -> dict[str, Any]:
        """Metrics SkyRL logs for the trajectory: none."""
        return {}

    @abstractmethod
    def _action(self, text: str) -> Any:
        """The env's action (its Action model, or fields as a dict) for the model's output."""

    @abstractmethod
    def _render(self, result: StepResult[Any]) -> str:
        """What the model is told of a step's result."""
