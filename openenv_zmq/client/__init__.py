"""Clients: ``BatchClient`` (blocking) and ``AsyncBatchClient`` (asyncio), same API."""

from openenv_zmq.client.aio import AsyncBatchClient, AsyncEnvGroup
from openenv_zmq.client.results import BatchResult
from openenv_zmq.client.sync import BatchClient, EnvGroup

__all__ = ["AsyncBatchClient", "AsyncEnvGroup", "BatchClient", "BatchResult", "EnvGroup"]
