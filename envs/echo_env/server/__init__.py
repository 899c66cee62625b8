"""Server side of the echo env."""

from echo_env.server.echo_environment import EchoEnvironment

__all__ = ["EchoEnvironment"]
