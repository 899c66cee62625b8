"""The interface the broker uses to start, watch and stop its workers."""

from __future__ import annotations

from typing import Protocol


class WorkerProvider(Protocol):
    """Starts workers that connect to the broker's backend and keeps their number up."""

    @property
    def extra_backend(self) -> str | None:
        """An ``ipc://`` address the broker binds its worker socket to as well, for workers that
        reach it only there (containers without a network); ``None``: none."""

    def start(self, connect: str) -> None:
        """Start every worker, connecting to the backend address ``connect``."""

    def poll(self) -> list[bytes]:
        """Socket identities of the workers whose process ended since the last poll
        (replacements are started)."""

    def worker_died(self, identity: bytes) -> None:
        """The broker declared the worker of socket ``identity`` dead: stop its process if it is
        one of this provider's and still runs. Never by name: any peer can claim a name."""

    def stop(self) -> None:
        """Stop every worker and wait for it; leave no process behind."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when it has none): engines' errors
    run to many lines, a provider's log and error messages take one."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
