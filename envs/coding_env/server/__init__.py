"""Server side of the coding env."""

from coding_env.server.python_codeact_env import PythonCodeActEnv

__all__ = ["PythonCodeActEnv"]
