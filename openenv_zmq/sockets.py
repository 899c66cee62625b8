"""Every zmq socket recipe of the runtime, defined once: high-water marks, linger, routing, size.

A socket never lingers on close (a dead peer must not hang a process), its queues are bounded
explicitly (backpressure, not silent drops), a ROUTER refuses to send to an unknown peer
instead of dropping the message, and no socket accepts a frame so large that receiving it would
allocate far past the configured message limit (:func:`max_frame_bytes`).

With CURVE (:func:`curve_server`, :func:`curve_client`) every byte is encrypted and every peer
proves its key; the broker's ZAP handler (``broker/zap.py``) decides which keys are admitted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TypeVar

import zmq

from openenv_zmq.curve import CurveKeys
from openenv_zmq.protocol import DEFAULT_LIMITS, Frame, Limits

HIGH_WATER_MARK = 100_000
"""Messages queued per peer and direction before a send would block (or fail, non-blocking)."""
ZERO_COPY_MIN_BYTES = 1 << 20
"""Frames smaller than this are sent by copying. pyzmq's zero-copy path hands every frame's
release to a garbage-collector thread, which costs more than copying a frame under ~1 MiB
(measured: it was the worker's largest cost stepping 8192 CartPoles)."""

MAX_FRAME_HEADROOM_BYTES = 16 * 2**20
"""How far above the message limit the ``ZMQ_MAXMSGSIZE`` backstop sits.

libzmq drops a peer that sends a frame over ``ZMQ_MAXMSGSIZE`` silently, after reading only the
frame's length, so nothing is allocated for it; but the peer is never told why, and the requests
it had in flight are lost. The backstop must therefore sit above anything a well-behaved peer
sends, which is refused by the codec with a clear ``MessageTooLarge`` instead: the size checks
count payload bytes, and a routing or identity frame, a header encoded apart, or a peer whose
limit differs slightly must not turn a clear refusal into a silent drop. A whole default header
(16 MiB) of headroom covers all of them.

``ZMQ_MAXMSGSIZE`` bounds each frame of a multipart message, not the message: a message of many
frames each under it passes libzmq, whatever its total, and is refused by the codec's total size
check. What the backstop guarantees is that no single allocation for an incoming frame exceeds
the limit plus this headroom; the total a peer can queue is bounded by the high-water marks.
"""

SocketT = TypeVar("SocketT", bound=zmq.Socket)  # type: ignore[type-arg]


def max_frame_bytes(limits: Limits) -> int:
    """The ``ZMQ_MAXMSGSIZE`` set for ``limits``: the message limit plus the headroom."""
    return limits.max_message_bytes + MAX_FRAME_HEADROOM_BYTES


def configure(
    socket: SocketT, high_water_mark: int = HIGH_WATER_MARK, limits: Limits = DEFAULT_LIMITS
) -> SocketT:
    """No linger, bounded queues both ways, small frames copied, incoming frames bounded by
    :func:`max_frame_bytes` (set before connect or bind: libzmq reads it per connection);
    returns ``socket``."""
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SNDHWM, high_water_mark)
    socket.setsockopt(zmq.RCVHWM, high_water_mark)
    socket.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes(limits))
    socket.copy_threshold = ZERO_COPY_MIN_BYTES
    return socket


WORKER_HIGH_WATER_MARK = 10_000
"""Messages queued each way between a worker and its broker."""


def curve_client(socket: SocketT, keys: CurveKeys) -> SocketT:
    """Make ``socket`` a CURVE client, before it connects: it encrypts everything, proves
    ``keys.public`` and refuses a server that cannot prove ``keys.server``; returns ``socket``."""
    socket.setsockopt(zmq.CURVE_SERVERKEY, keys.server)
    socket.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    socket.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    return socket


def curve_server(socket: SocketT, secret: bytes, domain: str) -> SocketT:
    """Make ``socket`` a CURVE server, before it binds; returns ``socket``.

    Every peer must complete a CURVE handshake (a plain socket is refused at its greeting) and
    is then admitted or refused by the ZAP handler of the socket's context for ``domain``.
    ``ZAP_ENFORCE_DOMAIN``: when no handler is bound, libzmq would otherwise admit every key.
    """
    socket.setsockopt(zmq.CURVE_SERVER, 1)
    socket.setsockopt(zmq.CURVE_SECRETKEY, secret)
    socket.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
    socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    return socket


def worker_dealer(
    socket: SocketT,
    identity: bytes,
    limits: Limits = DEFAULT_LIMITS,
    curve: CurveKeys | None = None,
) -> SocketT:
    """The DEALER a worker reaches its broker with, before it connects; returns ``socket``.

    It queues nothing for a broker that is not connected (``IMMEDIATE``): stale heartbeats and
    answers would reach a restarted broker, and READY is re-sent every interval anyway. With
    ``curve`` it is a CURVE client holding those keys.
    """
    socket.setsockopt(zmq.IDENTITY, identity)
    socket.setsockopt(zmq.IMMEDIATE, 1)
    if curve is not None:
        curve_client(socket, curve)
    return configure(socket, WORKER_HIGH_WATER_MARK, limits)


def router(
    context: zmq.Context[zmq.Socket[bytes]],
    address: str,
    limits: Limits = DEFAULT_LIMITS,
    curve: tuple[bytes, str] | None = None,
) -> zmq.Socket[bytes]:
    """A ROUTER bound to ``address`` that fails sends to unknown peers (``ROUTER_MANDATORY``);
    with ``curve`` = (secret key, ZAP domain), a :func:`curve_server`.

    Raises :class:`zmq.ZMQError` when it cannot bind; the socket is closed then.
    """
    socket = configure(context.socket(zmq.ROUTER), limits=limits)
    try:
        # Without MANDATORY a ROUTER silently drops messages to unknown peers.
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if curve is not None:
            curve_server(socket, *curve)
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


_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
_FRAMES_KNOW_MORE = zmq.backend.Frame.__module__.startswith("zmq.backend.cython")
"""pyzmq's Cython backend sets ``Frame.more`` on every receive; its cffi backend (PyPy) never
does, so there a receive asks ``RCVMORE`` instead."""


def readable(socket: zmq.Socket[bytes], timeout_ms: int = 0) -> bool:
    """Whether a message waits on ``socket``, waiting up to ``timeout_ms`` for one.
    ``zmq_poll`` itself: ``Socket.poll`` builds a ``Poller`` on every call."""
    return bool(zmq.zmq_poll([(socket, _POLLIN)], timeout_ms))


def send_frames(socket: zmq.Socket[bytes], frames: Sequence[Frame]) -> None:
    """``socket.send_multipart(frames, zmq.NOBLOCK, copy=False)`` for the frames the codec
    builds (bytes, buffers, received ``zmq.Frame`` s), without pyzmq's checks of every part's
    type and its flag enums: half the cost of a small message's send.

    libzmq refuses a message (``zmq.Again``, or ``EHOSTUNREACH`` from a ROUTER) at its first
    frame or not at all. Anything raised after the first frame went out (a frame of a type
    pyzmq cannot send, an interrupt) ends the message with an empty frame before it propagates:
    a half-sent message would otherwise take the next one's frames as its own, and an empty
    last frame makes it one that no decoder accepts.
    """
    *head, last = frames
    if not head:
        socket.send(last, _NOBLOCK, copy=False)
        return
    socket.send(head[0], _MORE, copy=False)
    try:
        for frame in head[1:]:
            socket.send(frame, _MORE, copy=False)
        socket.send(last, _NOBLOCK, copy=False)
    except BaseException:
        with contextlib.suppress(zmq.ZMQError):
            socket.send(b"", _NOBLOCK)
        raise


def receive_frames(socket: zmq.Socket[bytes]) -> list[zmq.Frame]:
    """One whole waiting message as ``zmq.Frame`` s (no copies); raises ``zmq.Again`` when none
    is. ``recv_multipart`` asks ``RCVMORE`` through pyzmq's enums; a frame knows it itself."""
    frame = socket.recv(_NOBLOCK, copy=False)
    frames = [frame]
    while frame.more if _FRAMES_KNOW_MORE else socket.get(zmq.RCVMORE):
        # the rest of a message arrives with its first frame
        frame = socket.recv(_NOBLOCK, copy=False)
        frames.append(frame)
    return frames


def queued(socket: zmq.Socket[bytes], limit: int) -> Iterator[list[zmq.Frame]]:
    """Up to ``limit`` messages already queued on ``socket`` (a poll said it is readable),
    without copies or blocking.

    Between messages it polls the socket without waiting: ending on a receive that fails
    raises ``zmq.Again``, which costs five times as much, once per poll on every hop.
    """
    for _ in range(limit):
        try:
            frames = receive_frames(socket)
        except zmq.Again:
            return
        yield frames
        if not readable(socket):
            return
