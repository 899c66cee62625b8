"""Action and observation of the echo env, field for field as in OpenEnv's seed."""

from __future__ import annotations

from pydantic import Field

from openenv_zmq.types import Action, Observation


class EchoAction(Action):
    """The message to echo back."""

    message: str = Field(..., description="Message to echo back")


class EchoObservation(Observation):
    """The echoed message and its length."""

    echoed_message: str = Field(..., description="The echoed message")
    message_length: int = Field(default=0, description="Length of the echoed message")
