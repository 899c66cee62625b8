"""The broker's worker registry: a record per registered worker, its lifecycle and status rows.

Pure bookkeeping, no messages: :class:`broker.core.BrokerCore` decides when a worker joins or
dies, and answers the requests that depend on it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

DEAD_WORKERS_KEPT = 64
"""Dead workers with no env ids left on them that status() still lists (the most recent ones)."""


class WorkerState(Enum):
    """``READY -> DRAINING -> DEAD``, or ``READY -> DEAD``: every transition is a method of
    :class:`WorkerRegistry`."""

    READY = "ready"
    """Takes new envs up to its capacity."""
    DRAINING = "draining"
    """Leaving soon (it sent DRAIN): takes no new env, still serves the envs it hosts."""
    DEAD = "dead"


@dataclass(slots=True, eq=False)
class WorkerRecord:
    id: int
    identity: bytes
    name: str
    pid: int
    envs: frozenset[str]
    capacity: int
    last_seen: float
    next_heartbeat: float
    joined: float
    """When it registered (the broker's clock)."""
    provider: str | None = None
    """Who started it (``local``, ``remote``, ``docker``...), as its READY said."""
    host: str | None = None
    instance: str | None = None
    """Its container, actor or pod id, when it has one."""
    state: WorkerState = WorkerState.READY
    used: int = 0
    """Env ids placed here; for a dead worker, its tombstones."""
    steps_served: int = 0
    death_reason: str = ""
    sandbox: dict[str, str] = field(default_factory=dict)
    """Each layer of its contained sessions and its state; empty when it hosts none."""
    in_flight: set[tuple[bytes, int]] = field(default_factory=set)
    registration: int | None = None
    """The worker's number for this registration (from its READY; older workers send none)."""

    @property
    def free(self) -> int:
        return self.capacity - self.used if self.state is WorkerState.READY else 0

    def status(self, now: float) -> dict[str, Any]:
        """A msgpack-able row for the broker's status, ``last_seen_ago`` and ``age_s`` (time
        since it registered) measured at ``now``."""
        return {
            "id": self.id,
            "name": self.name,
            "pid": self.pid,
            "provider": self.provider,
            "host": self.host,
            "instance": self.instance,
            "age_s": now - self.joined,
            "state": self.state.name,
            "envs": sorted(self.envs),
            "capacity": self.capacity,
            "used": self.used,
            "free": self.free,
            "steps_served": self.steps_served,
            "sandbox": self.sandbox,
            "last_seen_ago": now - self.last_seen,
        }


class WorkerRegistry:
    """Workers by id (live ones, dead ones while env ids are placed on them, and the latest
    :data:`DEAD_WORKERS_KEPT` dead ones without) and live workers by socket identity.

    Worker ids count up from ``first_id`` and are never reused: a record forgotten after death
    stays unknown.
    """

    def __init__(self, first_id: int) -> None:
        self.by_id: dict[int, WorkerRecord] = {}
        self.live: dict[bytes, WorkerRecord] = {}
        self._retired: deque[int] = deque()
        """Dead workers with no env ids placed on them, oldest first."""
        self._first_id = first_id
        self._next_id = first_id

    def add(
        self, identity: bytes, ready: Mapping[str, Any], now: float, next_heartbeat: float
    ) -> WorkerRecord:
        """A new live worker from the meta of its READY, under a fresh id (the caller ends an
        older registration of ``identity`` first)."""
        worker = WorkerRecord(
            id=self._next_id,
            identity=identity,
            name=ready["name"],
            pid=ready["pid"],
            envs=frozenset(ready["envs"]),
            capacity=ready["capacity"],
            sandbox=dict(ready.get("sandbox", {})),
            registration=ready.get("registration"),
            provider=ready.get("provider"),
            host=ready.get("host"),
            instance=ready.get("instance"),
            last_seen=now,
            next_heartbeat=next_heartbeat,
            joined=now,
        )
        self._next_id += 1
        self.by_id[worker.id] = worker
        self.live[identity] = worker
        return worker

    def drain(self, worker: WorkerRecord) -> bool:
        """The transition ``READY -> DRAINING``: ``worker`` takes no new env from now on.
        Returns whether it was READY (a second DRAIN changes nothing)."""
        if worker.state is not WorkerState.READY:
            return False
        worker.state = WorkerState.DRAINING
        return True

    def existed(self, worker_id: int) -> bool:
        """Whether ``worker_id`` was ever given out here, even if its record is forgotten."""
        return self._first_id <= worker_id < self._next_id

    def declare_dead(self, worker: WorkerRecord, reason: str) -> None:
        """The transition ``READY -> DEAD`` or ``DRAINING -> DEAD``; its env ids stay placed on it
        as tombstones."""
        worker.state = WorkerState.DEAD
        worker.death_reason = reason
        del self.live[worker.identity]
        if worker.used == 0:
            self._retire(worker)

    def unplace(self, worker: WorkerRecord, count: int) -> None:
        """``count`` env ids placed on ``worker`` are placed there no more."""
        worker.used -= count
        if worker.state is WorkerState.DEAD and worker.used == 0:
            self._retire(worker)

    def _retire(self, worker: WorkerRecord) -> None:
        """A dead worker without tombstones is only history: keep the latest few for status()."""
        self._retired.append(worker.id)
        while len(self._retired) > DEAD_WORKERS_KEPT:
            del self.by_id[self._retired.popleft()]

    def status(self, now: float) -> list[dict[str, Any]]:
        return [w.status(now) for w in self.by_id.values()]
