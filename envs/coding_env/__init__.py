"""OpenEnv's coding env: Python run by smolagents' interpreter, a contained process per episode."""

from coding_env.client import CodingEnv
from coding_env.models import CodeAction, CodeObservation, CodeState

__all__ = ["CodeAction", "CodeObservation", "CodeState", "CodingEnv"]
