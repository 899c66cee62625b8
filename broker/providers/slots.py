"""A provider's worker positions and when a dead worker is started again. Pure: every provider
(local processes, docker containers, Ray actors) keeps its workers in these and asks them."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from openenv_zmq.errors import WorkersFailing

log = logging.getLogger(__name__)

MAX_RESTART_DELAY = 10.0
SHORT_LIFE_SECONDS = 5.0
"""A worker that dies sooner than this after starting is restarted with a growing delay."""
MAX_QUICK_DEATHS = 5
"""A worker that died this many times in a row right after starting is not started again: what
kills it (a broken env, a missing dependency, no memory) will not go away on its own."""


@dataclass
class WorkerSlot:
    """One of a provider's worker positions; its worker is replaced when it dies."""

    index: int
    kind: str
    """The provider's name, which starts the worker's name: ``local``, ``docker``, ``ray``."""
    name: str = ""
    identity: bytes = b""
    """The socket identity its current worker registers with: the broker tells this worker from
    any peer by it (a name is only a label, which any peer can claim)."""
    generation: int = 0
    started_at: float = 0.0
    running: bool = False
    quick_deaths: int = 0
    restart_at: float | None = None
    given_up: str = ""
    """How its last worker ended, once it is not started again."""

    def launching(self, now: float) -> None:
        """A new worker takes the position: a fresh name and identity."""
        self.generation += 1
        suffix = f".{self.generation - 1}" if self.generation > 1 else ""
        self.name = f"{self.kind}-{self.index}{suffix}"
        self.identity = f"{self.name}-{secrets.token_hex(16)}".encode()
        self.started_at, self.running, self.restart_at = now, True, None

    def ended(self, now: float, how: str) -> None:
        """Its worker ended (``how`` says how, for the log): schedule the next one, at once or
        after a growing delay, or give up after :data:`MAX_QUICK_DEATHS` quick deaths."""
        self.running = False
        lived = now - self.started_at
        self.quick_deaths = self.quick_deaths + 1 if lived < SHORT_LIFE_SECONDS else 0
        if self.quick_deaths >= MAX_QUICK_DEATHS:
            self.given_up = f"{self.name} {how}"
            log.error(
                "worker %s died within %g s of starting %d times in a row; not starting it again"
                " (its own output says why)",
                self.name,
                SHORT_LIFE_SECONDS,
                self.quick_deaths,
            )
            return
        delay = min(MAX_RESTART_DELAY, 0.5 * 2 ** (self.quick_deaths - 1))
        self.restart_at = now + (delay if self.quick_deaths else 0.0)

    def due(self, now: float) -> bool:
        """Whether a new worker should be started here now."""
        return not self.running and self.restart_at is not None and now >= self.restart_at

    def stopped(self) -> None:
        """Stopped on purpose: not started again."""
        self.running, self.restart_at = False, None


def check_not_all_given_up(slots: Sequence[WorkerSlot]) -> None:
    """Raise :class:`WorkersFailing` when every position has been given up."""
    if slots and all(slot.given_up for slot in slots):
        raise WorkersFailing(
            f"every {slots[0].kind} worker died within {SHORT_LIFE_SECONDS:g} s of starting, "
            f"{MAX_QUICK_DEATHS} times in a row (last: "
            f"{'; '.join(slot.given_up for slot in slots)}); the broker stops"
        )
