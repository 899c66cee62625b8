"""Every zmq socket recipe of the runtime, defined once: high-water marks, linger, routing.

A socket never lingers on close (a dead peer must not hang a process), its queues are bounded
explicitly (backpressure, not silent drops), and a ROUTER refuses to send to an unknown peer
instead of dropping the message.
"""

from __future__ import annotations

from typing import TypeVar

import zmq

HIGH_WATER_MARK = 100_000
"""Messages queued per peer and direction before a send would block (or fail, non-blocking)."""
ZERO_COPY_MIN_BYTES = 1 << 20
"""Frames smaller than this are sent by copying. pyzmq's zero-copy path hands every frame's
release to a garbage-collector thread, which costs more than copying a frame under ~1 MiB
(measured: it was the worker's largest cost stepping 8192 CartPoles)."""

SocketT = TypeVar("SocketT", bound=zmq.Socket)  # type: ignore[type-arg]


def configure(socket: SocketT, high_water_mark: int = HIGH_WATER_MARK) -> SocketT:
    """No linger, bounded queues both ways, small frames copied; returns ``socket``."""
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SNDHWM, high_water_mark)
    socket.setsockopt(zmq.RCVHWM, high_water_mark)
    socket.copy_threshold = ZERO_COPY_MIN_BYTES
    return socket


WORKER_HIGH_WATER_MARK = 10_000
"""Messages queued each way between a worker and its broker."""


def worker_dealer(socket: SocketT, identity: bytes) -> SocketT:
    """The DEALER a worker reaches its broker with, before it connects; returns ``socket``.

    It queues nothing for a broker that is not connected (``IMMEDIATE``): stale heartbeats and
    answers would reach a restarted broker, and READY is re-sent every interval anyway.
    """
    socket.setsockopt(zmq.IDENTITY, identity)
    socket.setsockopt(zmq.IMMEDIATE, 1)
    return configure(socket, WORKER_HIGH_WATER_MARK)


def router(context: zmq.Context[zmq.Socket[bytes]], address: str) -> zmq.Socket[bytes]:
    """A ROUTER bound to ``address`` that fails sends to unknown peers (``ROUTER_MANDATORY``).

    Raises :class:`zmq.ZMQError` when it cannot bind; the socket is closed then.
    """
    socket = configure(context.socket(zmq.ROUTER))
    try:
        # Without MANDATORY a ROUTER silently drops messages to unknown peers.
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        socket.bind(address)
    except BaseException:
        socket.close(linger=0)
        raise
    return socket


def endpoint(socket: zmq.Socket[bytes]) -> str:
    """The address ``socket`` was last bound to, with a random port resolved."""
    value = socket.getsockopt(zmq.LAST_ENDPOINT)
    assert isinstance(value, bytes)
    return value.decode()
