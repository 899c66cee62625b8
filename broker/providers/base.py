"""The interface the broker uses to start, watch and stop its workers."""

from __future__ import annotations

from typing import Protocol


class WorkerProvider(Protocol):
    """Starts workers that connect to the broker's backend and keeps their number up."""

    def start(self, connect: str) -> None:
        """Start every worker, connecting to the backend address ``connect``."""

    def poll(self) -> list[str]:
        """Names of workers whose process ended since the last poll (replacements are started)."""

    def worker_died(self, name: str) -> None:
        """The broker declared ``name`` dead: stop its process if it still runs."""

    def stop(self) -> None:
        """Stop every worker and wait for it; leave no process behind."""
