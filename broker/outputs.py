"""What :class:`broker.core.BrokerCore` asks its loop to do, in order: messages to send and
worker lifecycle events to act on."""

from __future__ import annotations

from dataclasses import dataclass

from openenv_zmq.protocol import Frame


@dataclass(slots=True)
class ToClient:
    """Send ``frames`` to the frontend peer ``client``."""

    client: bytes
    frames: list[Frame]


@dataclass(slots=True)
class ToWorker:
    """Send ``frames`` (route frame first) to the backend peer ``identity``."""

    identity: bytes
    frames: list[Frame]


@dataclass(frozen=True, slots=True)
class WorkerJoined:
    worker_id: int
    name: str


@dataclass(frozen=True, slots=True)
class WorkerDied:
    worker_id: int
    name: str
    reason: str
    identity: bytes
    """Its socket identity: what tells it apart from another peer that took its name."""


Output = ToClient | ToWorker | WorkerJoined | WorkerDied
