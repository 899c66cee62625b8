"""Clients: ``BatchClient`` (blocking) and ``AsyncBatchClient`` (asyncio), same API, each over a
transport (zmq by default; see :mod:`openenv_zmq.client.transport`)."""

from openenv_zmq.client.aio import AsyncBatchClient, AsyncEnvGroup
from openenv_zmq.client.results import BatchResult
from openenv_zmq.client.sync import BatchClient, EnvGroup
from openenv_zmq.client.transport import AsyncTransport, Transport

__all__ = [
    "AsyncBatchClient",
    "AsyncEnvGroup",
    "AsyncTransport",
    "BatchClient",
    "BatchResult",
    "EnvGroup",
    "Transport",
]
