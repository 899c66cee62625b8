"""How workers are started: local processes (default); containers come later."""

from openenv_zmq.providers.base import WorkerProvider
from openenv_zmq.providers.local import LocalProvider

__all__ = ["LocalProvider", "WorkerProvider"]
