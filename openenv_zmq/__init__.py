"""openenv-zmq: step thousands of OpenEnv environments in batches over ZeroMQ."""

from openenv_zmq.client import AsyncBatchClient, AsyncEnvGroup, BatchClient, BatchResult, EnvGroup
from openenv_zmq.env import Environment
from openenv_zmq.types import Action, Observation, State, StepResult

__all__ = [
    "Action",
    "AsyncBatchClient",
    "AsyncEnvGroup",
    "BatchClient",
    "BatchResult",
    "EnvGroup",
    "Environment",
    "Observation",
    "State",
    "StepResult",
]
