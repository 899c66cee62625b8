"""The classic echo environment of OpenEnv's seed: echoes each message back."""

from echo_env.client import EchoEnv
from echo_env.models import EchoAction, EchoObservation

__all__ = ["EchoAction", "EchoEnv", "EchoObservation"]
