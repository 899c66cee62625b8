"""An env whose worker names, in its replies, a module the client never asked for.

Its observations are of a class in :mod:`tests.integration.forged_types`, imported only inside
``reset`` and ``step``: a client that imports this module (its own env spec) still has not
imported that one, unless it imports what a worker names.
"""

from __future__ import annotations

from typing import Any

from echo_env import EchoAction, EchoObservation

from openenv_zmq import Environment, State


class Env(Environment[EchoAction, EchoObservation, State]):
    def __init__(self) -> None:
        super().__init__()
        self._state = State()

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **_: Any
    ) -> EchoObservation:
        from tests.integration.forged_types import Planted

        return Planted(echoed_message="planted", message_length=7)

    def step(self, action: EchoAction, timeout_s: float | None = None, **_: Any) -> EchoObservation:
        return self.reset()

    @property
    def state(self) -> State:
        return self._state
