"""The echo env: reward is a tenth of the message length, episodes never end on their own."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from echo_env.models import EchoAction, EchoObservation
from openenv_zmq.env import Environment
from openenv_zmq.types import State

READY_MESSAGE = "Echo environment ready!"


class EchoEnvironment(Environment[EchoAction, EchoObservation, State]):
    """Echoes each message back; the reward is a tenth of its length."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self) -> None:
        super().__init__()
        self._state = State(episode_id=str(uuid4()), step_count=0)

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> EchoObservation:
        self._state = State(episode_id=episode_id or str(uuid4()), step_count=0)
        return EchoObservation(echoed_message=READY_MESSAGE, message_length=0, reward=0.0)

    def step(
        self, action: EchoAction, timeout_s: float | None = None, **kwargs: Any
    ) -> EchoObservation:
        self._state.step_count += 1
        message = action.message
        return EchoObservation(
            echoed_message=message,
            message_length=len(message),
            reward=len(message) * 0.1,
            done=False,
        )

    @property
    def state(self) -> State:
        return self._state
