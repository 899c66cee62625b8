"""Operation codes carried in frame 0 of every message."""

from __future__ import annotations

from enum import IntEnum


class Op(IntEnum):
    # client -> broker, answered by the broker itself
    ALLOC = 1
    STATUS = 2
    PING = 3
    HELLO = 4
    # client -> worker, routed by the broker by header field ``w``
    CREATE = 10
    RESET = 11
    STEP = 12
    STATE = 13
    CLOSE = 14
    # answers to any request
    REPLY = 20
    ERROR = 21
    # worker <-> broker control
    READY = 30
    WELCOME = 31
    HEARTBEAT = 32
    DISCONNECT = 33
    BYE = 34
    DRAIN = 35


BROKER_OPS = frozenset({Op.ALLOC, Op.STATUS, Op.PING, Op.HELLO})
"""Requests the broker answers itself."""

WORKER_OPS = frozenset({Op.CREATE, Op.RESET, Op.STEP, Op.STATE, Op.CLOSE})
"""Requests the broker forwards, untouched, to the worker named in the header."""

REQUEST_OPS = BROKER_OPS | WORKER_OPS
ANSWER_OPS = frozenset({Op.REPLY, Op.ERROR})
CONTROL_OPS = frozenset({Op.READY, Op.WELCOME, Op.HEARTBEAT, Op.DISCONNECT, Op.BYE, Op.DRAIN})

CONTROL_ROUTE = b""
"""Route frame of broker <-> worker control messages; any other route is a client identity."""
