"""Action, observation and state of the coding env, field for field as in OpenEnv's."""

from __future__ import annotations

from pydantic import Field

from openenv_zmq.types import Action, Observation, State


class CodeAction(Action):
    """Python code to run in the episode's interpreter."""

    code: str = Field(..., description="Python code to execute")


class CodeObservation(Observation):
    """What running the code printed and returned, or the error it raised."""

    stdout: str = Field(
        default="",
        description="The print output, then the JSON of the last statement's value",
    )
    stderr: str = Field(default="", description="The traceback when the code failed")
    exit_code: int = Field(default=0, description="0 when the code ran to its end, else 1")


class CodeState(State):
    """The episode's state, with the exit code of its last step."""

    last_exit_code: int = Field(default=0, description="Exit code of the last step")
