"""How workers are started: local processes (default); containers come later."""

from broker.providers.base import WorkerProvider
from broker.providers.local import LocalProvider

__all__ = ["LocalProvider", "WorkerProvider"]
