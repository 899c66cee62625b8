"""The worker process: a thin zmq pump around :class:`WorkerCore` and :class:`BrokerLink`.

Two threads share the process's one zmq Context:

- the I/O thread owns the DEALER connected to the broker's backend. It feeds control messages and
  clock ticks to :class:`BrokerLink`, so heartbeats keep flowing while a long batch steps, and
  relays requests (untouched) to the stepping thread over an inproc PAIR, answers back the same way.
- the stepping thread, the caller's, runs :meth:`WorkerCore.handle` on each request in arrival
  order. ``drop_all`` orders travel through the same PAIR, so they stay ordered with requests.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

import zmq

from openenv_zmq.errors import ProtocolError
from openenv_zmq.protocol import Frame, Message, Op, decode, encode
from openenv_zmq.worker.core import BrokerLink, LinkOutput, WorkerCore, WorkerLifecycle
from openenv_zmq.zmq_options import copy_small_frames

__all__ = ["WorkerLifecycle", "run_worker"]

log = logging.getLogger(__name__)

_POLL_MS = 100
"""Longest a thread waits on a socket before it looks at the stop flags again."""
_DEALER_HWM = 10_000
_BYE_LINGER_MS = 500
"""How long closing the DEALER may wait for BYE to leave: bounded, so a dead broker cannot hang."""
_RECV_BATCH = 1_000
"""Messages read from one socket per wake-up, so neither direction can starve the other or ticks."""
_DROP_ALL = [b"", b"drop-all"]
"""On the PAIR, route ``b""`` is an order for the stepping thread rather than a request."""

Stopping = Callable[[], bool]


def run_worker(
    connect: str,
    envs: Sequence[str],
    capacity: int = 4096,
    name: str | None = None,
    heartbeat_interval: float = 1.0,
    liveness: float = 2.5,
    stop: threading.Event | None = None,
) -> None:
    """Host ``envs`` for the broker whose backend is at ``connect`` until told to stop.

    Stops on SIGINT / SIGTERM (handlers are installed only when called from the main thread) or
    when ``stop`` is set: sends ``BYE``, closes every env and socket, and returns. Raises
    :class:`~openenv_zmq.errors.EnvNotFound` before connecting if an env does not resolve, and
    re-raises whatever ended the I/O thread (a malformed ``connect`` address, say).
    """
    name = name or f"{socket.gethostname()}-{os.getpid()}"
    core = WorkerCore(envs, capacity)
    ready = Message(
        Op.READY, meta={"envs": list(envs), "capacity": capacity, "name": name, "pid": os.getpid()}
    )
    halt = threading.Event()

    def stopping() -> bool:
        return halt.is_set() or (stop is not None and stop.is_set())

    context = zmq.Context()
    stepping_end: zmq.Socket[bytes] = context.socket(zmq.PAIR)
    pump: _BrokerPump | None = None
    restore_signals = _stop_on_signals(halt)
    try:
        # Unbounded: the I/O thread must never block on the stepping thread (that would stop
        # heartbeats); what can queue here is bounded by the broker's in-flight limits.
        stepping_end.setsockopt(zmq.SNDHWM, 0)
        stepping_end.setsockopt(zmq.RCVHWM, 0)
        stepping_end.setsockopt(zmq.LINGER, 0)
        copy_small_frames(stepping_end)
        address = f"inproc://worker-{secrets.token_hex(8)}"
        stepping_end.bind(address)
        # A fresh identity per process: the broker must not mistake a restarted worker of the
        # same name for the one it knew.
        identity = f"{name}-{secrets.token_hex(4)}".encode()
        link = BrokerLink(ready, heartbeat_interval, liveness, time.monotonic())
        pump = _BrokerPump(context, connect, identity, address, link, stopping, halt)
        pump.start()
        log.info("worker %s hosting %s (capacity %d) -> %s", name, list(envs), capacity, connect)
        _step_requests(core, stepping_end, stopping)
    finally:
        halt.set()
        if pump is not None:
            pump.join()
        stepping_end.close(linger=0)
        core.drop_all()
        context.term()
        restore_signals()
    log.info("worker %s stopped", name)
    if pump.failure is not None:
        raise pump.failure


def _step_requests(core: WorkerCore, pair: zmq.Socket[bytes], stopping: Stopping) -> None:
    """The stepping thread: answer each request the I/O thread relays, in order."""
    while not stopping():
        if not pair.poll(_POLL_MS):
            continue
        frames = pair.recv_multipart(copy=False)
        route = frames[0].bytes
        if not route:
            core.drop_all()
            continue
        answer = core.handle([frame.buffer for frame in frames[1:]])
        while not pair.poll(_POLL_MS, zmq.POLLOUT):
            if stopping():  # the I/O thread is gone; the broker answers this request itself
                return
        pair.send_multipart([route, *answer], copy=False)


def _stop_on_signals(halt: threading.Event) -> Callable[[], None]:
    """Make SIGINT / SIGTERM set ``halt``; returns what puts the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        halt.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    return restore


class _BrokerPump(threading.Thread):
    """The I/O thread: owns the DEALER, drives :class:`BrokerLink`, relays requests and answers.

    Whatever ends it sets ``halt`` (so the stepping thread stops too) and is kept in ``failure``.
    """

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        connect: str,
        identity: bytes,
        pair_address: str,
        link: BrokerLink,
        stopping: Stopping,
        halt: threading.Event,
    ) -> None:
        super().__init__(name="worker-io", daemon=True)
        self._context = context
        self._connect = connect
        self._identity = identity
        self._pair_address = pair_address
        self._link = link
        self._stopping = stopping
        self._halt = halt
        self.failure: BaseException | None = None

    def run(self) -> None:
        dealer: zmq.Socket[bytes] = self._context.socket(zmq.DEALER)
        pair: zmq.Socket[bytes] = self._context.socket(zmq.PAIR)
        bye_sent = False
        try:
            dealer.setsockopt(zmq.IDENTITY, self._identity)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.SNDHWM, _DEALER_HWM)
            dealer.setsockopt(zmq.RCVHWM, _DEALER_HWM)
            # Queue nothing for a broker that is not connected: stale heartbeats and answers
            # would reach a restarted broker; READY is re-sent every interval anyway.
            dealer.setsockopt(zmq.IMMEDIATE, 1)
            pair.setsockopt(zmq.SNDHWM, 0)
            pair.setsockopt(zmq.RCVHWM, 0)
            pair.setsockopt(zmq.LINGER, 0)
            pair.connect(self._pair_address)
            dealer.connect(self._connect)
            self._pump(dealer, pair)
            bye_sent = self._send(dealer, [b"", *encode(self._link.drain())])
        except BaseException as exc:
            self.failure = exc
        finally:
            self._halt.set()
            dealer.close(linger=_BYE_LINGER_MS if bye_sent else 0)
            pair.close(linger=0)
            if self._link.state is WorkerLifecycle.DRAINING:
                self._link.dead()

    def _pump(self, dealer: zmq.Socket[bytes], pair: zmq.Socket[bytes]) -> None:
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(pair, zmq.POLLIN)
        while not self._stopping():
            now = time.monotonic()
            if now >= self._link.deadline:
                self._apply(self._link.on_tick(now), dealer, pair)
            wait_ms = math.ceil((self._link.deadline - time.monotonic()) * 1000)
            ready = dict(poller.poll(min(max(wait_ms, 0), _POLL_MS)))
            if dealer in ready:
                self._from_broker(dealer, pair)
            if pair in ready:
                for _ in range(_RECV_BATCH):
                    try:
                        answer = pair.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    if not self._send(dealer, answer):
                        log.warning("broker not reachable; an answer was dropped")

    def _from_broker(self, dealer: zmq.Socket[bytes], pair: zmq.Socket[bytes]) -> None:
        for _ in range(_RECV_BATCH):
            try:
                frames = dealer.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            now = time.monotonic()
            if len(frames) < 2:
                log.warning("ignoring a %d-frame message from the broker", len(frames))
                continue
            if frames[0].bytes:
                self._link.heard(now)
                pair.send_multipart(frames, copy=False)
                continue
            try:
                control = decode([frame.buffer for frame in frames[1:]])
            except ProtocolError as exc:
                log.warning("ignoring an undecodable control message from the broker: %s", exc)
                continue
            self._apply(self._link.on_control(control, now), dealer, pair)

    def _apply(
        self, output: LinkOutput, dealer: zmq.Socket[bytes], pair: zmq.Socket[bytes]
    ) -> None:
        if output.drop_all:
            pair.send_multipart(_DROP_ALL)
        for message in output.send:
            if not self._send(dealer, [b"", *encode(message)]):
                self._link.not_sent(message, time.monotonic())

    @staticmethod
    def _send(dealer: zmq.Socket[bytes], frames: Sequence[zmq.Frame | Frame]) -> bool:
        """Send without blocking; ``False`` when no broker is connected (see IMMEDIATE)."""
        try:
            dealer.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        return True
