"""The broker's zmq loop: moves frames between two ROUTER sockets and :class:`BrokerCore`.

All routing decisions are the core's; this module only receives, sends and keeps time. With
CURVE keys both sockets are CURVE servers and :mod:`broker.zap` decides who may connect; the
loop hands the core each client message's key (its connection's ``User-Id``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import zmq

from broker.core import (
    BrokerConfig,
    BrokerCore,
    Output,
    ToClient,
    ToWorker,
    WorkerDied,
    WorkerJoined,
)
from broker.exposure import local_address
from broker.keys import BrokerKeys, Role
from broker.providers.base import WorkerProvider
from broker.zap import DOMAINS, ZapHandler, gatekeeper_for
from openenv_zmq.curve import make_private_dir
from openenv_zmq.errors import TransportError
from openenv_zmq.protocol import Frame, Limits
from openenv_zmq.sockets import endpoint, queued, router, send_frames

log = logging.getLogger(__name__)

MAX_POLL_SECONDS = 0.1
"""Upper bound on one wait, so that :meth:`BrokerServer.stop` and dead workers are seen quickly."""
PROVIDER_POLL_SECONDS = 0.05
"""How often the provider is asked which worker processes ended."""
DRAIN_BATCH = 256
"""Messages taken from one socket per wakeup before the other socket gets its turn."""
_UNSENDABLE = (errno.EHOSTUNREACH, errno.EAGAIN)


class BrokerServer:
    """A broker bound to a ``frontend`` (clients) and a ``backend`` (workers) address.

    Call order: :meth:`bind` (optional: :meth:`run` binds if needed), read
    :attr:`frontend_address` / :attr:`backend_address`, then :meth:`run`, which blocks until
    :meth:`stop` is called from another thread or a signal handler. ``run`` starts the
    ``provider``'s workers on the backend address (over loopback when it is a wildcard, such as
    ``0.0.0.0``) and stops them, closes both sockets, removes
    ipc socket files and terminates the zmq context on the way out. A server runs once.

    With ``curve`` both sockets are CURVE servers with the broker's key: clients are admitted
    by the keys in its ``clients/`` allowlist, workers by those in ``workers/`` (and the
    provider's workers by ``curve.local_worker``, which the provider must give them). A missing
    folder of an ``ipc://`` address is created, mode 0700: the socket file is only as private
    as the folder it is in.
    """

    def __init__(
        self,
        frontend: str,
        backend: str,
        config: BrokerConfig | None = None,
        provider: WorkerProvider | None = None,
        curve: BrokerKeys | None = None,
    ) -> None:
        self.core = BrokerCore(config)
        self.provider = provider
        self.curve = curve
        self._addresses = (frontend, backend)
        self._zap: ZapHandler | None = None
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._frontend: zmq.Socket[bytes] | None = None
        self._backend: zmq.Socket[bytes] | None = None
        self._bound: tuple[str, str] | None = None
        self._extra_backend: str | None = None
        # Plain attributes, not Events: setting them is safe inside a signal handler.
        self._stopping = False
        self._winding_down = False
        self.publish_every: float | None = None
        """Seconds between copies of the core's status into :attr:`published`; ``None``
        (the default): none is made. Set before :meth:`run`."""
        self.published: dict[str, Any] | None = None
        """The core's latest ``status()``, for readers on other threads (the Prometheus
        exporter): the routing thread replaces it whole and never changes it after."""

    def bind(self) -> None:
        """Create the context and bind both sockets. Raises :class:`TransportError` naming the
        address when one cannot be bound (in use, not an address)."""
        if self._bound is not None:
            return
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        bound: list[zmq.Socket[bytes]] = []
        zap = None if self.curve is None else ZapHandler(context, gatekeeper_for(self.curve))
        try:
            if zap is not None:
                zap.bind()  # before the sockets: a handshake may come as soon as one is bound
            limits = self.core.config.limits
            for address, role in zip(self._addresses, (Role.CLIENT, Role.WORKER), strict=True):
                curve = None if self.curve is None else (self.curve.secret, DOMAINS[role])
                bound.append(_listening(context, address, limits, curve))
                if zap is not None:
                    zap.watch(bound[-1], DOMAINS[role], endpoint(bound[-1]))
            if zap is not None:
                zap.start()
        except BaseException:
            for socket in bound:
                socket.close(linger=0)
            if zap is not None:
                zap.close()
            context.term()
            raise
        frontend, backend = bound
        self._context, self._frontend, self._backend, self._zap = context, frontend, backend, zap
        self._bound = (endpoint(frontend), endpoint(backend))
        extra = None if self.provider is None else self.provider.extra_backend
        if extra is not None:
            try:
                _bind_more(backend, extra)
            except BaseException:
                self.close()
                raise
            self._extra_backend = extra

    @property
    def frontend_address(self) -> str:
        """The bound client address, with a random port resolved. Only after :meth:`bind`."""
        return self._endpoints()[0]

    @property
    def backend_address(self) -> str:
        """The bound worker address, with a random port resolved. Only after :meth:`bind`."""
        return self._endpoints()[1]

    def _endpoints(self) -> tuple[str, str]:
        if self._bound is None:
            raise RuntimeError("the broker is not bound: call bind() first")
        return self._bound

    def stop(self) -> None:
        """Make :meth:`run` return within :data:`MAX_POLL_SECONDS`; safe in threads and signals."""
        self._stopping = True

    def wind_down(self) -> None:
        """Leave the workers be until :meth:`stop`: neither replace one that exits nor kill one
        declared dead. For a cluster on its way out, whose workers may be leaving already (a
        terminal's Ctrl-C reaches every process of its group); safe in threads and signals."""
        self._winding_down = True

    def run(self) -> None:
        """Route until :meth:`stop`; then stop the workers and release every resource."""
        if self._bound is not None and self._context is None:
            raise RuntimeError("this broker has already run; create a new BrokerServer")
        self.bind()
        try:
            if self.provider is not None:
                # A wildcard bind is no address to connect to: this host's workers use loopback.
                self.provider.start(local_address(self.backend_address))
            self._route()
        finally:
            try:
                if self.provider is not None:
                    self.provider.stop()
            finally:
                self.close()

    def close(self) -> None:
        """Close the sockets, remove ipc socket files and terminate the context. Idempotent."""
        for socket in (self._frontend, self._backend):
            if socket is not None:
                socket.close(linger=0)
        if self._zap is not None:  # after the sockets it answers for, before the context ends
            self._zap.close()
            self._zap = None
        if self._context is not None:
            self._context.term()
        for address in (*(self._bound or ()), self._extra_backend or ""):
            path = address.removeprefix("ipc://")
            # "@..." is Linux's abstract namespace: no file to remove.
            if path != address and not path.startswith("@"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        self._context = self._frontend = self._backend = None

    def _route(self) -> None:
        frontend, backend = self._frontend, self._backend
        assert frontend is not None
        assert backend is not None
        core = self.core
        poller = zmq.Poller()
        poller.register(frontend, zmq.POLLIN)
        poller.register(backend, zmq.POLLIN)
        next_provider_poll = next_publish = 0.0
        # Every CURVE connection carries its key as User-Id; a plain one has none to read.
        keyed = self.curve is not None
        while not self._stopping:
            timeout = min(core.next_timeout(time.monotonic()), MAX_POLL_SECONDS)
            ready = dict(poller.poll(math.ceil(timeout * 1000)))
            if frontend in ready:
                for peer, frames in self._drain(frontend):
                    key = str(peer.get("User-Id")) if keyed else None
                    self._deliver(core.on_client(peer.bytes, frames, time.monotonic(), key=key))
            if backend in ready:
                for peer, frames in self._drain(backend):
                    self._deliver(core.on_worker(peer.bytes, frames, time.monotonic()))
            now = time.monotonic()
            if self.provider is not None and not self._winding_down and now >= next_provider_poll:
                # Process checks are system calls: not once per message on the hot path.
                next_provider_poll = now + PROVIDER_POLL_SECONDS
                for identity in self.provider.poll():
                    self._deliver(core.worker_exited(identity, now))
            if self.publish_every is not None and now >= next_publish:
                next_publish = now + self.publish_every
                self.published = core.status(now)
            if core.next_timeout(now) <= 0:
                self._deliver(core.on_tick(now))

    @staticmethod
    def _drain(socket: zmq.Socket[bytes]) -> Iterator[tuple[zmq.Frame, list[Frame]]]:
        """Up to :data:`DRAIN_BATCH` waiting messages as (peer identity frame, frames), without
        copies; the identity frame carries the connection's properties (``User-Id``)."""
        for peer, *frames in queued(socket, DRAIN_BATCH):
            # zmq.Frame exposes the buffer protocol; its type stubs do not declare it.
            yield peer, cast("list[Frame]", frames)

    def _deliver(self, outputs: list[Output]) -> None:
        frontend, backend = self._frontend, self._backend
        assert frontend is not None
        assert backend is not None
        pending = outputs
        while pending:
            follow_ups: list[Output] = []
            for output in pending:
                if isinstance(output, ToClient):
                    if self._send(frontend, output.client, output.frames):
                        log.warning("dropped an answer to client %r: unreachable", output.client)
                elif isinstance(output, ToWorker):
                    failed = self._send(backend, output.identity, output.frames)
                    if failed:
                        gone = failed == errno.EHOSTUNREACH
                        follow_ups += self.core.undeliverable(output, time.monotonic(), gone)
                elif isinstance(output, WorkerJoined):
                    log.info("worker %d (%s) joined", output.worker_id, output.name)
                elif isinstance(output, WorkerDied):
                    log.info(
                        "worker %d (%s) died: %s", output.worker_id, output.name, output.reason
                    )
                    if self.provider is not None and not self._winding_down:
                        self.provider.worker_died(output.identity)
            pending = follow_ups

    @staticmethod
    def _send(socket: zmq.Socket[bytes], peer: bytes, frames: list[Frame]) -> int:
        """Send without blocking; 0, or why not: ``EHOSTUNREACH`` (the ROUTER knows no such
        peer: its connection is gone) or ``EAGAIN`` (its queue is full)."""
        try:
            send_frames(socket, [peer, *frames])
        except zmq.ZMQError as exc:
            if exc.errno in _UNSENDABLE:
                return exc.errno
            raise
        return 0


def _bind_more(socket: zmq.Socket[bytes], address: str) -> None:
    """Bind ``socket`` to the ``ipc://`` ``address`` too (its folder created 0700)."""
    make_private_dir(Path(address.removeprefix("ipc://")).parent)
    try:
        socket.bind(address)
    except zmq.ZMQError as exc:
        reason = exc.strerror if exc.errno is None else zmq.strerror(exc.errno)
        raise TransportError(f"cannot listen on {address}: {reason}") from None


def _listening(
    context: zmq.Context[zmq.Socket[bytes]],
    address: str,
    limits: Limits,
    curve: tuple[bytes, str] | None,
) -> zmq.Socket[bytes]:
    path = address.removeprefix("ipc://")
    if path != address and not path.startswith("@"):
        # Created 0700 when missing: only its owner can reach a socket file inside it.
        make_private_dir(Path(path).parent)
    try:
        return router(context, address, limits, curve)
    except zmq.ZMQError as exc:
        reason = exc.strerror if exc.errno is None else zmq.strerror(exc.errno)
        raise TransportError(f"cannot listen on {address}: {reason}") from None
