"""The worker: hosts many env instances and steps the sub-batches the broker routes to it."""

from openenv_zmq.worker.core import BrokerLink, LinkOutput, SlotStatus, WorkerCore, WorkerLifecycle
from openenv_zmq.worker.loop import run_worker

__all__ = [
    "BrokerLink",
    "LinkOutput",
    "SlotStatus",
    "WorkerCore",
    "WorkerLifecycle",
    "run_worker",
]
