"""Envs the integration tests host on real workers (as ``tests.integration.fixture_envs:Name``).

Workers are started from the repository root with ``python -m broker``, so this module is
importable in them without any path edits.
"""

from __future__ import annotations

import time
from typing import Any

from echo_env import EchoAction, EchoObservation
from echo_env.server.echo_environment import EchoEnvironment


class SlowEchoEnv(EchoEnvironment):
    """Echo that takes ``delay`` seconds per step, so requests are in flight long enough."""

    def __init__(self, delay: float = 0.05) -> None:
        super().__init__()
        self.delay = delay

    def step(
        self, action: EchoAction, timeout_s: float | None = None, **kwargs: Any
    ) -> EchoObservation:
        time.sleep(self.delay)
        return super().step(action)


class FragileEchoEnv(EchoEnvironment):
    """Echo that raises on the message "boom"."""

    def step(
        self, action: EchoAction, timeout_s: float | None = None, **kwargs: Any
    ) -> EchoObservation:
        if action.message == "boom":
            raise ZeroDivisionError("boom was sent")
        return super().step(action)
