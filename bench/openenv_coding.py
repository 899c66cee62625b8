"""The OpenEnv baseline for the coding env: a coding env written on openenv-core's classes with
the ``PyExecutor`` its wheel ships, served by its own server, one session per server (OpenEnv's
default ``max_concurrent_envs``), as OpenEnv runs one coding container per session."""

from __future__ import annotations

import contextlib
from typing import Any
from uuid import uuid4

from openenv.core.env_server import (  # type: ignore[import-untyped]
    Action,
    Environment,
    Observation,
    State,
    create_fastapi_app,
)
from openenv.core.tools.local_python_executor import PyExecutor  # type: ignore[import-untyped]

from bench.openenv_server import served


class OpenEnvCodeAction(Action):  # type: ignore[misc]  # openenv-core ships no type information
    code: str


class OpenEnvCodeObservation(Observation):  # type: ignore[misc]
    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0


class OpenEnvCodeState(State):  # type: ignore[misc]
    last_exit_code: int = 0


class OpenEnvCodingEnvironment(Environment):  # type: ignore[misc]
    """OpenEnv's coding env as its ``envs/coding_env`` has it (rewards left out: they cost the
    same on both sides and are not what is measured)."""

    def __init__(self) -> None:
        super().__init__()
        self._executor = PyExecutor()
        self._state = OpenEnvCodeState()

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> OpenEnvCodeObservation:
        self._state = OpenEnvCodeState(episode_id=str(uuid4()), step_count=0)
        self._executor = PyExecutor()
        return OpenEnvCodeObservation()

    def step(
        self, action: OpenEnvCodeAction, timeout_s: float | None = None, **kwargs: Any
    ) -> OpenEnvCodeObservation:
        result = self._executor.run(action.code)
        self._state.step_count += 1
        self._state.last_exit_code = result.exit_code
        return OpenEnvCodeObservation(
            stdout=result.stdout,
            stderr=result.stderr,
            exit_code=result.exit_code,
            metadata={"last_code": action.code},
        )

    @property
    def state(self) -> Any:
        return self._state


def openenv_coding_app() -> Any:
    """OpenEnv's own server app for the coding env, one session at a time."""
    return create_fastapi_app(
        OpenEnvCodingEnvironment, OpenEnvCodeAction, OpenEnvCodeObservation, max_concurrent_envs=1
    )


def openenv_coding_server() -> contextlib.AbstractContextManager[str]:
    """One OpenEnv coding server process; yields its base URL."""
    return served(openenv_coding_app, "OpenEnv's coding server", log_level="critical")
