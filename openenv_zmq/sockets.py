"""zmq settings shared by the runtime's processes."""

from __future__ import annotations

from typing import TypeVar

import zmq

ZERO_COPY_MIN_BYTES = 1 << 20
"""Frames smaller than this are sent by copying. pyzmq's zero-copy path hands every frame's
release to a garbage-collector thread, which costs more than copying a frame under ~1 MiB
(measured: it was the worker's largest cost stepping 8192 CartPoles)."""

SocketT = TypeVar("SocketT", bound=zmq.Socket)  # type: ignore[type-arg]


def copy_small_frames(socket: SocketT) -> SocketT:
    socket.copy_threshold = ZERO_COPY_MIN_BYTES
    return socket
