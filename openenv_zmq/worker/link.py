"""The worker's link with its broker, sans I/O: registration, heartbeats, liveness, draining.

:class:`BrokerLink` decides when to send ``READY`` / ``HEARTBEAT`` / ``DRAIN`` / ``BYE``, when the
broker counts as gone and when a draining worker must leave. It opens no socket and reads no
clock: the zmq loop in :mod:`openenv_zmq.worker.loop` feeds it messages and passes ``now`` in.

```
STARTING --WELCOME--> READY --drain()--> DRAINING
    ^                   |                    |
    +---DISCONNECT, ----+                    |
        broker silent                        |
 every state --------------leave(): BYE----------> DEAD
```
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from enum import Enum

from openenv_zmq.protocol import Message, Op

log = logging.getLogger(__name__)


class WorkerLifecycle(Enum):
    """Where a worker is in its registration with the broker."""

    STARTING = "starting"
    """READY sent (and re-sent every interval) until the broker answers WELCOME. Requests are
    not served: any that come were sent to a registration this worker has given up."""
    READY = "ready"
    """Registered: heartbeats flow both ways."""
    DRAINING = "draining"
    """Leaving on purpose: DRAIN sent, so the broker places no new env here; the envs hosted
    here are still served until they are all closed or the drain deadline passes."""
    DEAD = "dead"
    """BYE sent (or the sockets closed): nothing more is sent."""


NOT_SERVING = (
    "the worker gave up its registration (its broker fell silent or did not know it), and with"
    " it its envs; it is registering again"
)
"""Why a request that comes while the worker is not registered fails with ``WorkerLost``."""

READY_RETRY_SECONDS = 0.05
"""How soon a READY that could not be sent (no connection yet) is tried again."""

_LIFECYCLE_TRANSITIONS: dict[WorkerLifecycle, frozenset[WorkerLifecycle]] = {
    WorkerLifecycle.STARTING: frozenset({WorkerLifecycle.READY, WorkerLifecycle.DEAD}),
    WorkerLifecycle.READY: frozenset(
        {WorkerLifecycle.STARTING, WorkerLifecycle.DRAINING, WorkerLifecycle.DEAD}
    ),
    WorkerLifecycle.DRAINING: frozenset({WorkerLifecycle.DEAD}),
    WorkerLifecycle.DEAD: frozenset(),
}


@dataclass(frozen=True, slots=True)
class LinkOutput:
    """What the I/O side must do after feeding :class:`BrokerLink` an event."""

    send: tuple[Message, ...] = ()
    """Control messages for the broker, in order."""
    drop_all: bool = False
    """Every env slot must be dropped (the broker no longer knows this worker)."""
    leave: bool = False
    """A draining worker must leave now (its deadline passed, or the broker forgot it): call
    :meth:`BrokerLink.leave` and send its ``BYE``."""


_NOTHING = LinkOutput()


class BrokerLink:
    """Registration and liveness of one worker with its broker, sans I/O.

    Call :meth:`on_control` with every control message (route ``b""``), :meth:`heard` with any
    other message from the broker (and serve it only while :attr:`serving`), and :meth:`on_tick`
    whenever :attr:`deadline` has passed; send what they return. To stop on purpose,
    :meth:`drain` (when READY) and then, once nothing is left to serve or an output says
    ``leave``, :meth:`leave`, which returns the ``BYE`` to send last.

    Each registration has a number (:attr:`registration`, sent in ``READY``), raised whenever
    the worker drops its envs to register again. ``READY`` is re-sent every interval until a
    ``WELCOME`` for that number comes: a broker welcomes the re-sent ones again under the same
    worker id, so READYs that piled up while the network was down, or that crossed a late
    WELCOME, register the worker once, not once each.
    """

    def __init__(self, ready: Message, interval: float, liveness: float, now: float) -> None:
        if ready.op is not Op.READY:
            raise ValueError(f"BrokerLink needs the READY message to send, not {ready.op.name}")
        if interval <= 0 or liveness <= 0:
            raise ValueError("heartbeat interval and liveness must be positive")
        self.state = WorkerLifecycle.STARTING
        self.worker_id: int | None = None
        self.registration = 0
        self.interval = interval
        self._liveness = liveness
        self._ready = ready
        self._numbered_ready = self._number(ready)
        self._last_heard = now
        self._next_send = now  # READY goes out at the first tick
        self._drain_deadline = float("inf")
        self._drain_unsent = False

    def _to(self, state: WorkerLifecycle) -> None:
        """The one place the lifecycle changes."""
        if state not in _LIFECYCLE_TRANSITIONS[self.state]:
            raise RuntimeError(f"worker cannot go from {self.state.name} to {state.name}")
        log.debug("worker lifecycle %s -> %s", self.state.name, state.name)
        self.state = state

    def _number(self, ready: Message) -> Message:
        return dataclasses.replace(ready, meta={**ready.meta, "registration": self.registration})

    @property
    def registered(self) -> bool:
        """Whether the broker knows this worker (READY or DRAINING): env slots may be in use."""
        return self.state in (WorkerLifecycle.READY, WorkerLifecycle.DRAINING)

    @property
    def serving(self) -> bool:
        """Whether requests are to be served: only while registered (a draining worker serves
        its envs until it leaves).

        A request that comes while :attr:`WorkerLifecycle.STARTING` was sent to a registration
        this worker gave up, whose envs it dropped: it is answered ``WorkerLost``
        (:data:`NOT_SERVING`), not run, since running it could only make envs nobody knows of.
        """
        return self.registered

    @property
    def deadline(self) -> float:
        """When :meth:`on_tick` must next be called."""
        if self.registered:
            silent = self._last_heard + self._liveness * self.interval
            return min(self._next_send, silent, self._drain_deadline)
        return self._next_send

    def heard(self, now: float) -> None:
        """Any message from the broker shows it is alive."""
        self._last_heard = now

    def on_control(self, message: Message, now: float) -> LinkOutput:
        self._last_heard = now
        if self.state is WorkerLifecycle.DEAD:
            return _NOTHING
        if self.state is WorkerLifecycle.DRAINING:
            return self._on_control_draining(message)
        if message.op is Op.WELCOME:
            registration = message.meta.get("registration", self.registration)
            if registration != self.registration:
                log.debug(
                    "ignoring the WELCOME of registration %d (this is %d)",
                    registration,
                    self.registration,
                )
                return _NOTHING
            heartbeat = float(message.meta["heartbeat"])
            if heartbeat > 0:
                self.interval = heartbeat
            else:
                log.warning(
                    "ignoring WELCOME heartbeat interval %r; keeping %s", heartbeat, self.interval
                )
            self.worker_id = message.meta["worker"]
            if self.state is WorkerLifecycle.STARTING:
                self._to(WorkerLifecycle.READY)
                log.info("registered with the broker as worker %d", self.worker_id)
            return _NOTHING
        if message.op is Op.HEARTBEAT:
            return _NOTHING
        if message.op is Op.DISCONNECT:
            if self.state is WorkerLifecycle.STARTING:
                # The answer to something sent before this READY: it is on its way already.
                log.debug("broker: %s (registering already)", message.meta["reason"])
                return _NOTHING
            log.warning("broker disconnected this worker: %s", message.meta["reason"])
            return self._register_again(now)
        if message.op is Op.ERROR:
            log.warning(
                "broker refused a control message: %s: %s",
                message.meta["type"],
                message.meta["message"],
            )
        else:
            log.warning("ignoring unexpected control message %s", message.op.name)
        return _NOTHING

    def _on_control_draining(self, message: Message) -> LinkOutput:
        if message.op is Op.DISCONNECT:
            # The broker forgot this worker: its envs are gone there, nothing is left to serve.
            log.warning(
                "broker disconnected this draining worker (%s); leaving", message.meta["reason"]
            )
            return LinkOutput(drop_all=True, leave=True)
        if message.op is Op.ERROR:
            log.warning(
                "broker refused a control message: %s: %s (a broker that does not know DRAIN"
                " still places envs here; this worker leaves at its drain deadline all the same)",
                message.meta["type"],
                message.meta["message"],
            )
        return _NOTHING

    def on_tick(self, now: float) -> LinkOutput:
        if self.registered and now - self._last_heard > self._liveness * self.interval:
            silence = now - self._last_heard
            if self.state is WorkerLifecycle.DRAINING:
                log.warning("broker silent for %.1f s while draining; leaving", silence)
                return LinkOutput(drop_all=True, leave=True)
            log.warning("broker silent for %.1f s; registering again", silence)
            return self._register_again(now)
        if self.state is WorkerLifecycle.DRAINING and now >= self._drain_deadline:
            log.warning("drain deadline reached with envs still here; leaving")
            return LinkOutput(leave=True)
        if self.state is WorkerLifecycle.DEAD or now < self._next_send:
            return _NOTHING
        self._next_send = now + self.interval
        if self.state is WorkerLifecycle.STARTING:
            return LinkOutput(send=(self._numbered_ready,))
        if self._drain_unsent:
            self._drain_unsent = False
            return LinkOutput(send=(Message(Op.DRAIN), Message(Op.HEARTBEAT)))
        return LinkOutput(send=(Message(Op.HEARTBEAT),))

    def keepalive(self, now: float) -> Message | None:
        """The heartbeat due at ``now`` while a batch steps and nobody reads the socket.

        Broker silence is not judged here: the broker's own heartbeats wait unread until the
        batch is done, and :meth:`on_tick` judges after they have been read.
        """
        if not self.registered or now < self._next_send:
            return None
        self._next_send = now + self.interval
        return Message(Op.HEARTBEAT)

    def _register_again(self, now: float) -> LinkOutput:
        """Leave the registration (READY -> STARTING): drop every env, register under the next
        number."""
        self._to(WorkerLifecycle.STARTING)
        self.worker_id = None
        self.registration += 1
        self._numbered_ready = self._number(self._ready)
        self._last_heard = now
        self._next_send = now + self.interval
        return LinkOutput(send=(self._numbered_ready,), drop_all=True)

    def not_sent(self, message: Message, now: float) -> None:
        """The I/O side could not send ``message``: no broker is connected yet (or any more).

        READY is then retried soon rather than an interval later, so a worker registers as soon as
        its connection is up.
        """
        if message.op is Op.READY:
            self._next_send = min(self._next_send, now + min(self.interval, READY_RETRY_SECONDS))
        elif message.op is Op.DRAIN:
            self._drain_unsent = True  # sent again with the next heartbeat

    def drain(self, now: float, timeout: float) -> LinkOutput:
        """Start leaving on purpose, ``timeout`` seconds from ``now`` at the latest: the
        ``DRAIN`` to send, after which the broker places no new env here. Only while READY
        (raises :class:`RuntimeError` otherwise): a worker that is not registered hosts no env,
        and leaves at once.

        Then serve on; :meth:`on_tick` says ``leave`` at the deadline (or when the broker is
        gone), and the caller calls :meth:`leave` sooner once no env is left.
        """
        self._to(WorkerLifecycle.DRAINING)
        self._drain_deadline = now + timeout
        return LinkOutput(send=(Message(Op.DRAIN),))

    def leave(self) -> Message:
        """Stop: the ``BYE`` to send, the last message of this worker. Call once."""
        self._to(WorkerLifecycle.DEAD)
        return Message(Op.BYE)
