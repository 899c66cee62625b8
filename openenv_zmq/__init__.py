"""openenv-zmq: step thousands of OpenEnv environments in batches over ZeroMQ."""

from importlib.metadata import PackageNotFoundError, version

from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.client import AsyncBatchClient, AsyncEnvGroup, BatchClient, BatchResult, EnvGroup
from openenv_zmq.client.envclient import EnvClient, SyncEnvClient
from openenv_zmq.env import Environment, VectorEnvironment
from openenv_zmq.errors import EnvServerError
from openenv_zmq.pool import AsyncSessionPool, SessionPool
from openenv_zmq.spaces import Box, Discrete
from openenv_zmq.types import Action, Observation, State, StepResult

try:
    __version__ = version("openenv-zmq")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Action",
    "AsyncBatchClient",
    "AsyncEnvGroup",
    "AsyncSessionPool",
    "AutoresetMode",
    "BatchClient",
    "BatchResult",
    "Box",
    "Discrete",
    "EnvClient",
    "EnvGroup",
    "EnvServerError",
    "Environment",
    "Observation",
    "SessionPool",
    "State",
    "StepResult",
    "SyncEnvClient",
    "VectorEnvironment",
]
