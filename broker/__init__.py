"""The broker: a sans-I/O routing core (:mod:`broker.core`) and the zmq loop that pumps it."""

from broker.core import (
    BrokerConfig,
    BrokerCore,
    Output,
    ToClient,
    ToWorker,
    WorkerDied,
    WorkerJoined,
    WorkerState,
)
from broker.epoch import Epoch
from broker.loop import BrokerServer

__all__ = [
    "BrokerConfig",
    "BrokerCore",
    "BrokerServer",
    "Epoch",
    "Output",
    "ToClient",
    "ToWorker",
    "WorkerDied",
    "WorkerJoined",
    "WorkerState",
]
