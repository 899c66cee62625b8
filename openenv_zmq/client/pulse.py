"""A client's heartbeat: it keeps the session's lease and tells when the broker is gone.

A trainer may spend minutes in backprop or a checkpoint without a call; its env groups must
outlive that, so a thread of its own pings the broker every ``heartbeat_s`` (from the broker's
HELLO answer) over a socket of its own, with the session token: each ping renews the lease.
Its answers say the broker is alive: a call waiting for its answers raises :class:`BrokerLost`
once the broker has answered no ping for :data:`LIVENESS` intervals, instead of waiting out its
whole timeout for a broker that is gone.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable

import zmq

from openenv_zmq.errors import BrokerLost
from openenv_zmq.protocol import Limits, Message, Op, encode

LIVENESS = 2.5
"""Intervals without an answer after which the broker is lost: a dead broker is noticed within 3
(the workers' rule for a silent worker)."""
STOP_CHECK_S = 0.1
"""The longest the heartbeat thread waits before it looks whether it was stopped."""


class Liveness:
    """When the broker last answered, and whether a call waiting since some time should give up.

    Pure: the heartbeat thread records answers, a waiting call asks :meth:`lost`.
    """

    def __init__(self, interval: float, now: float) -> None:
        self.interval = interval
        self.last_answer = now

    def answered(self, now: float) -> None:
        self.last_answer = now

    def silence(self, now: float, waiting_since: float) -> float:
        """Seconds without an answer that count against a call waiting since ``waiting_since``.

        Counted from the call's start at the earliest: a process that held the GIL for a while
        (its heartbeat thread starved) must not find the broker lost the moment it waits again.
        """
        return now - max(self.last_answer, waiting_since)

    def lost(self, now: float, waiting_since: float) -> bool:
        return self.silence(now, waiting_since) > LIVENESS * self.interval


class Pulse:
    """Pings the broker every ``interval`` seconds from a daemon thread, over ``socket`` (a
    DEALER connected to the broker, used by this thread only), with ``session()``'s token."""

    def __init__(
        self,
        socket: zmq.Socket[bytes],
        session: Callable[[], bytes | None],
        interval: float,
        address: str,
        limits: Limits,
    ) -> None:
        self.liveness = Liveness(interval, time.monotonic())
        self.address = address
        self._session = session
        self._limits = limits
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(socket,), name="openenv-zmq-heartbeat", daemon=True
        )
        self._thread.start()

    def check(self, waiting_since: float, pending: int) -> None:
        """Raise :class:`BrokerLost` when a call waiting since ``waiting_since`` (monotonic) for
        ``pending`` answers should give up on the broker."""
        now = time.monotonic()
        if self.liveness.lost(now, waiting_since):
            silence = self.liveness.silence(now, waiting_since)
            raise BrokerLost(
                f"the broker at {self.address} answered no heartbeat for {silence:.1f} s"
                f" (heartbeat every {self.liveness.interval:g} s): it is gone or cut off;"
                f" {pending} request(s) got no answer. Calls work again once a broker answers"
                " at this address"
            )

    def stop(self) -> None:
        """Stop the thread at its next wakeup (within :data:`STOP_CHECK_S`), without waiting."""
        self._stopping.set()

    def close(self) -> None:
        """Stop the thread and wait for it to close its socket."""
        self.stop()
        self._thread.join(timeout=2 * STOP_CHECK_S)

    def _run(self, socket: zmq.Socket[bytes]) -> None:
        request_ids = itertools.count(1)
        interval = self.liveness.interval
        try:
            while not self._stopping.is_set():
                ping = Message(Op.PING, next(request_ids), session=self._session())
                # Not connected yet, or the queue is full: the silence will tell.
                with contextlib.suppress(zmq.Again):
                    socket.send_multipart(encode(ping, self._limits), zmq.NOBLOCK)
                due = time.monotonic() + interval
                while not self._stopping.is_set():
                    remaining = due - time.monotonic()
                    if remaining <= 0:
                        break
                    if socket.poll(int(min(remaining, STOP_CHECK_S) * 1000) + 1, zmq.POLLIN):
                        while socket.poll(0, zmq.POLLIN):
                            socket.recv_multipart(zmq.NOBLOCK)
                        # Any answer, an error included, is a broker that is there.
                        self.liveness.answered(time.monotonic())
        finally:
            socket.close(linger=0)
