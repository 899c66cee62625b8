"""The worker: hosts many env instances and steps the sub-batches the broker routes to it."""

from openenv_zmq.worker.core import WorkerCore
from openenv_zmq.worker.link import BrokerLink, LinkOutput, WorkerLifecycle
from openenv_zmq.worker.loop import run_worker
from openenv_zmq.worker.status import SlotStatus

__all__ = [
    "BrokerLink",
    "LinkOutput",
    "SlotStatus",
    "WorkerCore",
    "WorkerLifecycle",
    "run_worker",
]
