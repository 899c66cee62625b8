"""The broker's routing core, sans I/O: frames and a clock in, frames and events out.

Feed it every message with :meth:`BrokerCore.on_client` (frontend) and :meth:`BrokerCore.on_worker`
(backend), call :meth:`BrokerCore.on_tick` within :meth:`BrokerCore.next_timeout` seconds, and
deliver what each call returns, in order. No call raises on any input.

It keeps five tables:

- workers: a :class:`WorkerRegistry` of records by id (lifecycle ``READY -> DRAINING -> DEAD``,
  see :class:`WorkerState`) and of live workers by identity. A DRAINING worker (it sent
  ``DRAIN``) is live: it heartbeats and its envs' requests are forwarded to it, but no new env is
  placed on it;
- placement: env id -> worker id. Env ids of a dead worker stay placed on it as tombstones, so that
  requests for them answer ``SessionLost`` and ``ALLOC`` with ids can move them to a live worker;
- in flight: ``(client, request id)`` -> the worker it was forwarded to, so that every forwarded
  request gets exactly one answer: the worker's, or ``WorkerLost`` when the worker dies first;
- the number of requests each client has in flight (its limit is backpressure, not a silent drop);
- client sessions and the env groups each owns (:class:`~broker.sessions.SessionTable`): every
  request but HELLO, STATUS and PING acts for a session, on env ids of one of its own groups, and
  renews the session's lease; a session whose lease runs out has its groups closed.

It also counts (:class:`~broker.metrics.BrokerMetrics`, in ``status()["metrics"]``) the requests
it forwards by op, the env steps among them, the errors it answers by type (its own, and those
workers answer with), and each request's time from forwarding to its worker's answer.

Env ids and worker ids count up from the core's :class:`~broker.epoch.Epoch`, a random start per
broker lifetime, so that a client holding ids from before a restart reaches none of the new ones.

Only frame 0 of a message is ever decoded; payload frames are forwarded as the very same objects.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from broker.epoch import Epoch
from broker.metrics import BrokerMetrics
from broker.outputs import Output, ToClient, ToWorker, WorkerDied, WorkerJoined
from broker.placement import Host, place
from broker.sessions import Group, Session, SessionTable
from broker.workers import WorkerRecord, WorkerRegistry, WorkerState
from openenv_zmq.errors import (
    EnvNotOnWorker,
    MessageTooLarge,
    NotOwner,
    NoWorkerAvailable,
    OpenEnvZmqError,
    ProtocolError,
    RemoteError,
    SessionLost,
    TooManyInFlight,
    WorkerLost,
)
from openenv_zmq.protocol import (
    ANSWER_OPS,
    CONTROL_ROUTE,
    DEFAULT_LIMITS,
    WORKER_OPS,
    EnvIds,
    Frame,
    Limits,
    Message,
    Op,
    decode_header,
    encode,
    error_message,
    readable_request_id,
)

__all__ = [
    "BrokerConfig",
    "BrokerCore",
    "Output",
    "ToClient",
    "ToWorker",
    "WorkerDied",
    "WorkerJoined",
    "WorkerState",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerConfig:
    heartbeat_interval: float = 1.0
    """Seconds between the broker's heartbeats to each worker (sent to workers in WELCOME)."""
    liveness: float = 2.5
    """A worker silent for more than ``liveness * heartbeat_interval`` seconds is dead: a killed
    worker is detected within 3 intervals."""
    max_in_flight_per_client: int = 4096
    limits: Limits = DEFAULT_LIMITS
    epoch: Epoch | None = None
    """Where env ids and worker ids start; ``None`` (the default) draws a fresh random one for
    each core, so that no id of an earlier broker lifetime is valid in this one."""
    lease: float = 300.0
    """Seconds a client session keeps its env groups after its last request or heartbeat.
    Clients heartbeat every ``heartbeat_interval`` on their own, so only a client that is gone
    (killed, suspended, cut off) loses its envs."""
    max_envs_per_client: int | None = None
    """The most env slots one client may hold at once (one CURVE key over all its sessions, or
    one session without CURVE); ``None``: no limit."""
    max_client_sessions: int = 65_536
    """Client sessions kept at once: each costs memory until its lease runs out."""


@dataclass(frozen=True, slots=True)
class _Request:
    worker_id: int
    env_ids: EnvIds | None
    op: Op
    sent: float
    """When it was forwarded (the core's clock)."""


_HEARTBEAT: tuple[Frame, ...] = tuple(encode(Message(Op.HEARTBEAT)))
BROKER_ROUTE = b"\x00broker"
"""Route of requests the broker itself sends a worker (closing an expired session's envs).
libzmq's own frontend identities are 5 bytes; a peer that picks this one as its identity is
refused (:meth:`BrokerCore.on_client`), so no client's answer is ever taken for the broker's."""


class BrokerCore:
    """Routing between clients and workers; each method returns the outputs to deliver, in order."""

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig()
        self._silence_limit = self.config.liveness * self.config.heartbeat_interval
        epoch = Epoch.fresh() if self.config.epoch is None else self.config.epoch
        self._registry = WorkerRegistry(epoch.first_worker_id)
        # The step path looks workers up in the registry's tables directly.
        self._workers = self._registry.by_id
        self._live = self._registry.live
        self._placement: dict[int, int] = {}
        self._in_flight: dict[tuple[bytes, int], _Request] = {}
        self._client_in_flight: dict[bytes, int] = {}
        self._first_env_id = self._next_env_id = epoch.first_env_id
        self._sessions = SessionTable(
            self.config.lease, self.config.max_envs_per_client, self.config.max_client_sessions
        )
        self._sweep_interval = min(self.config.heartbeat_interval, self.config.lease / 4)
        self._next_sweep = 0.0
        self._own_request_ids = itertools.count(1)
        self._now = 0.0
        """The latest clock reading passed in, for :meth:`status` and request times."""
        self._metrics = BrokerMetrics(lifetime=epoch.first_env_id)
        # The hot path counts through these directly.
        self._forwarded = self._metrics.requests
        self._latency = self._metrics.latency

    # ------------------------------------------------------------------ frontend

    def on_client(
        self, client: bytes, frames: Sequence[Frame], now: float, key: str | None = None
    ) -> list[Output]:
        """A message from frontend peer ``client`` (its identity frame already removed).

        ``key``: the client's CURVE public key (z85) when CURVE is on; a session is bound to it.
        """
        self._now = now
        if client == BROKER_ROUTE:
            request_id = readable_request_id(frames, self.config.limits)
            message = "this connection's identity is reserved for the broker: pick another"
            return [self._error(client, request_id, ProtocolError.__name__, message)]
        try:
            request = decode_header(frames, self.config.limits)
        except ProtocolError as exc:
            request_id = readable_request_id(frames, self.config.limits)
            log.info("refused a malformed request %d from %r: %s", request_id, client, exc)
            return [self._error(client, request_id, type(exc).__name__, str(exc))]
        op = request.op
        if op is Op.STATUS:
            status = Message(Op.REPLY, request.request_id, meta={"status": self.status()})
            return [ToClient(client, encode(status))]
        if op is Op.HELLO:
            return [self._hello(client, request.request_id, key, now)]
        session = None
        if request.session is not None:
            try:
                session = self._sessions.find(request.session, key, now)
            except RemoteError as exc:
                return [self._error(client, request.request_id, type(exc).__name__, str(exc))]
        if op is Op.PING:
            return [ToClient(client, encode(Message(Op.REPLY, request.request_id)))]
        if session is None:
            message = f"{op.name} needs a client session ('s'): send HELLO first"
            return [self._error(client, request.request_id, ProtocolError.__name__, message)]
        if op in WORKER_OPS:
            return self._forward(client, session, request, frames)
        if op is Op.ALLOC:
            return [self._alloc(client, session, request)]
        return [
            self._error(
                client, request.request_id, ProtocolError.__name__, f"{op.name} is not a request op"
            )
        ]

    def _hello(self, client: bytes, request_id: int, key: str | None, now: float) -> ToClient:
        try:
            session = self._sessions.open(key, now)
        except RemoteError as exc:
            return self._error(client, request_id, type(exc).__name__, str(exc))
        meta = {
            "session": session.token,
            "lease_s": self.config.lease,
            "heartbeat_s": self.config.heartbeat_interval,
        }
        return ToClient(client, encode(Message(Op.REPLY, request_id, meta=meta)))

    def _own_group(self, session: Session, request: Message) -> Group:
        """The request's group, checked to be ``session``'s and to hold its env ids.

        Raises :class:`NotOwner`, :class:`EnvNotOnWorker` when there is no such group, or
        :class:`ProtocolError` when the request names none.
        """
        if request.group is None:
            raise ProtocolError(f"{request.op.name} needs the id ('g') of its env ids' group")
        group = self._sessions.group(session, request.group, request.env_ids)
        if group is not None:
            return group
        if self._first_env_id <= request.group < self._next_env_id:
            raise EnvNotOnWorker(
                f"no open env group {request.group}: it was closed, or never made; make the envs"
                " again"
            )
        raise EnvNotOnWorker(
            f"no env group {request.group} in this broker's lifetime: these envs come from an"
            " earlier broker at this address, or were never made; make them again"
        )

    def _forward(
        self, client: bytes, session: Session, request: Message, frames: Sequence[Frame]
    ) -> list[Output]:
        request_id, env_ids = request.request_id, request.env_ids
        try:
            group = self._own_group(session, request)
        except OpenEnvZmqError as exc:
            return [self._error(client, request_id, type(exc).__name__, str(exc), env_ids)]
        key = (client, request_id)
        if key in self._in_flight:
            message = f"request id {request_id} is already in flight"
            return [self._error(client, request_id, ProtocolError.__name__, message)]
        count = self._client_in_flight.get(client, 0)
        if count >= self.config.max_in_flight_per_client:
            message = (
                f"{count} requests already in flight (limit {self.config.max_in_flight_per_client})"
            )
            return [self._error(client, request_id, TooManyInFlight.__name__, message)]
        assert request.worker is not None  # the schema of every worker op requires it
        worker = self._workers.get(request.worker)
        if worker is None:
            message = (
                f"worker {request.worker} died and hosts none of these env ids any more"
                if self._registry.existed(request.worker)
                else f"no worker {request.worker} in this broker's lifetime: these envs come from"
                " an earlier broker at this address, or were never made; make them again"
            )
            return [self._error(client, request_id, EnvNotOnWorker.__name__, message, env_ids)]
        if worker.state is WorkerState.DEAD:
            return [self._to_dead_worker(client, request, worker, group)]
        op = request.op
        if op is Op.CREATE and not self._all_placed_on(worker, env_ids):
            # Else a client could build its envs on workers the broker counts as free: past its
            # quota, and beyond the reach of its lease's cleanup.
            message = f"these env ids are not placed on worker {worker.id}: ALLOC places them"
            return [self._error(client, request_id, NotOwner.__name__, message, env_ids)]
        if op is Op.CLOSE:
            self._sessions.released(group, self._release(worker, env_ids))
        elif op is Op.STEP and env_ids is not None:
            steps = len(env_ids)
            worker.steps_served += steps
            self._metrics.env_steps += steps
        self._forwarded[op] += 1
        self._in_flight[key] = _Request(worker.id, env_ids, op, self._now)
        self._client_in_flight[client] = count + 1
        worker.in_flight.add(key)
        return [ToWorker(worker.identity, [client, *frames])]

    def _all_placed_on(self, worker: WorkerRecord, env_ids: EnvIds | None) -> bool:
        placement = self._placement
        return env_ids is not None and all(
            placement.get(env_id) == worker.id for env_id in env_ids.tolist()
        )

    def _to_dead_worker(
        self, client: bytes, request: Message, worker: WorkerRecord, group: Group
    ) -> ToClient:
        if request.op is Op.CLOSE:
            # Nothing is left to close: the envs died with their worker.
            self._sessions.released(group, self._release(worker, request.env_ids))
            reply = Message(Op.REPLY, request.request_id, env_ids=request.env_ids)
            return ToClient(client, encode(reply))
        message = (
            f"worker {worker.id} ({worker.name}) hosting these envs died ({worker.death_reason});"
            " reset() places them on a live worker"
        )
        return self._error(
            client, request.request_id, SessionLost.__name__, message, request.env_ids
        )

    def _release(self, worker: WorkerRecord, env_ids: EnvIds | None) -> int:
        """Forget the placement of those ``env_ids`` that are placed on ``worker``; returns how
        many were."""
        if env_ids is None:
            return 0
        released = 0
        for env_id in env_ids.tolist():
            if self._placement.get(env_id) == worker.id:
                del self._placement[env_id]
                released += 1
        self._registry.unplace(worker, released)
        return released

    # ------------------------------------------------------------------ allocation

    def _alloc(self, client: bytes, session: Session, request: Message) -> ToClient:
        env: str = request.meta["env"]
        num_envs: int = request.meta["num_envs"]
        request_id = request.request_id
        limits = self.config.limits
        try:
            if num_envs > limits.max_env_ids:
                # Refused before any slot is reserved: no reply could carry the ids.
                raise MessageTooLarge(
                    f"asked for {num_envs:,} envs in one group; a reply names at most "
                    f"{limits.max_env_ids:,} env ids under this broker's header limit of "
                    f"{limits.max_header_bytes:,} bytes: make several groups"
                )
            if request.env_ids is None:
                return ToClient(client, self._alloc_new(session, request_id, env, num_envs))
            self._own_group(session, request)
            replaced = self._alloc_again(request_id, env, num_envs, request.env_ids)
            return ToClient(client, encode(replaced, limits))
        except OpenEnvZmqError as exc:
            return self._error(client, request_id, type(exc).__name__, str(exc))

    def _alloc_new(self, session: Session, request_id: int, env: str, num_envs: int) -> list[Frame]:
        """The reply placing ``num_envs`` new envs as a new group of ``session``, encoded;
        nothing stays reserved when it cannot be encoded."""
        self._sessions.check_quota(session, num_envs)
        shares = self._shares(env, num_envs)
        start = self._next_env_id
        env_ids = np.arange(start, start + num_envs, dtype=np.int64)
        reply = replace(self._place(request_id, env_ids, shares), group=start)
        try:
            frames = encode(reply, self.config.limits)
        except ProtocolError:
            for worker, _ in shares:
                self._release(worker, env_ids)
            raise
        self._next_env_id += num_envs
        self._sessions.add_group(session, start, num_envs)
        return frames

    def _alloc_again(self, request_id: int, env: str, num_envs: int, env_ids: EnvIds) -> Message:
        """Move env ids whose worker died to live workers, keeping the ids."""
        ids = env_ids.tolist()
        if len(ids) != num_envs:
            raise ProtocolError(f"ALLOC names {len(ids)} env ids but asks for {num_envs} envs")
        if len(set(ids)) != len(ids):
            raise ProtocolError("ALLOC names an env id twice")
        owners: dict[int, int] = {}
        for env_id in ids:
            worker_id = self._placement.get(env_id)
            if worker_id is None:
                raise RemoteError(f"unknown env id {env_id}")
            if self._workers[worker_id].state is not WorkerState.DEAD:
                raise RemoteError(f"env id {env_id} is live on worker {worker_id}")
            owners[worker_id] = owners.get(worker_id, 0) + 1
        shares = self._shares(env, len(ids))
        for worker_id, count in owners.items():
            self._registry.unplace(self._workers[worker_id], count)
        return self._place(request_id, env_ids, shares)

    def _place(
        self, request_id: int, env_ids: EnvIds, shares: list[tuple[WorkerRecord, int]]
    ) -> Message:
        workers = np.repeat(
            np.array([w.id for w, _ in shares], dtype=np.int64), [n for _, n in shares]
        )
        self._placement.update(zip(env_ids.tolist(), workers.tolist(), strict=True))
        for worker, count in shares:
            worker.used += count
        return Message(Op.REPLY, request_id, env_ids=env_ids, parts={"workers": workers})

    def _shares(self, env: str, num_envs: int) -> list[tuple[WorkerRecord, int]]:
        """How many of ``num_envs`` new envs go to each live worker hosting ``env`` that is not
        draining: see :func:`broker.placement.place`. Raises :class:`NoWorkerAvailable`."""
        live = [w for w in self._live.values() if w.state is WorkerState.READY]
        hosts = [w for w in live if env in w.envs]
        if not hosts:
            hosted = sorted({name for w in live for name in w.envs})
            draining = len(self._live) - len(live)
            raise NoWorkerAvailable(
                f"no live worker hosts env {env!r}; "
                + (f"live workers host: {', '.join(hosted)}" if hosted else "no worker is live")
                + (f" ({draining} draining worker(s) take no new envs)" if draining else "")
            )
        counts = place([Host(w.used, w.capacity) for w in hosts], num_envs, env)
        return [(w, n) for w, n in zip(hosts, counts, strict=True) if n]

    # ------------------------------------------------------------------ backend

    def on_worker(self, identity: bytes, frames: Sequence[Frame], now: float) -> list[Output]:
        """A message ``[route, header, *payload]`` from backend peer ``identity``."""
        self._now = now
        worker = self._live.get(identity)
        if not frames:
            return self._bad_worker_message(identity, worker, ProtocolError("empty message"))
        route = bytes(frames[0])
        body = frames[1:]
        if route == BROKER_ROUTE and worker is not None:
            # The answer to a CLOSE the broker sent for an expired session: nobody awaits it.
            worker.last_seen = now
            return []
        try:
            message = decode_header(body, self.config.limits)
        except ProtocolError as exc:
            if worker is not None and route != CONTROL_ROUTE:
                lost = self._fail_malformed_answer(worker, route, body, exc)
                return [*lost, *self._bad_worker_message(identity, worker, exc)]
            return self._bad_worker_message(identity, worker, exc)
        if route == CONTROL_ROUTE and message.op is Op.READY:
            return self._register(identity, message, now)
        if worker is None:
            log.info(
                "told unregistered peer %r to register (it sent %s)", identity, message.op.name
            )
            disconnect = Message(Op.DISCONNECT, meta={"reason": "not registered: send READY"})
            return [ToWorker(identity, [CONTROL_ROUTE, *encode(disconnect)])]
        worker.last_seen = now
        if route != CONTROL_ROUTE:
            return self._answer(worker, route, message, body)
        if message.op is Op.HEARTBEAT:
            return []
        if message.op is Op.BYE:
            return self._declare_dead(worker, "left")
        if message.op is Op.DRAIN:
            if self._registry.drain(worker):
                log.info(
                    "worker %d (%s) is draining: no new envs go to it; %d env(s) still on it",
                    worker.id,
                    worker.name,
                    worker.used,
                )
            return []
        if message.op is Op.ERROR:
            # Never answer an error with an error: two peers would bounce them forever.
            log.warning("worker %d (%s) reported: %s", worker.id, worker.name, message.meta)
            return []
        return self._bad_worker_message(
            identity, worker, ProtocolError(f"{message.op.name} is not a worker control op")
        )

    def _answer(
        self, worker: WorkerRecord, client: bytes, message: Message, body: Sequence[Frame]
    ) -> list[Output]:
        if message.op not in ANSWER_OPS:
            return self._bad_worker_message(
                worker.identity,
                worker,
                ProtocolError(f"{message.op.name} is not an answer to a client"),
            )
        key = (client, message.request_id)
        request = self._in_flight.get(key)
        if request is None or request.worker_id != worker.id:
            log.warning(
                "dropped an answer from worker %d to request %d of %r: not in flight there",
                worker.id,
                message.request_id,
                client,
            )
            return []
        self._finish(key, worker)
        self._latency[request.op].observe(self._now - request.sent)
        if message.op is Op.ERROR:
            # Its header is decoded already: counting it reads no payload.
            self._metrics.error(message.meta["type"])
        return [ToClient(client, list(body))]

    def _fail_malformed_answer(
        self, worker: WorkerRecord, client: bytes, body: Sequence[Frame], exc: ProtocolError
    ) -> list[Output]:
        """A worker answered a request with frames that do not decode: the request still gets
        exactly one answer, if its id can be read."""
        key = (client, readable_request_id(body, self.config.limits))
        request = self._in_flight.get(key)
        if request is None or request.worker_id != worker.id:
            return []
        self._finish(key, worker)
        message = f"worker {worker.id} ({worker.name}) sent a malformed answer: {exc}"
        return [self._error(client, key[1], type(exc).__name__, message, request.env_ids)]

    def _register(self, identity: bytes, ready: Message, now: float) -> list[Output]:
        """A worker's READY: a new registration, or one already made asked for again.

        The worker numbers its registrations; a READY numbered no higher than the live one of its
        identity was sent before that one's WELCOME reached it (re-sent every interval until it
        does, or queued while the network was down), and is welcomed again under the same id.
        Anything else ends the old registration (the worker dropped its envs) and makes a new one.
        """
        outputs: list[Output] = []
        old = self._live.get(identity)
        registration = ready.meta.get("registration")
        if old is not None:
            if (
                registration is not None
                and old.registration is not None
                and registration <= old.registration
            ):
                old.last_seen = now
                return [ToWorker(identity, self._welcome(old))]
            outputs += self._declare_dead(old, "registered again")
        heartbeat_due = now + self.config.heartbeat_interval
        worker = self._registry.add(identity, ready.meta, now, heartbeat_due)
        outputs.append(ToWorker(identity, self._welcome(worker)))
        outputs.append(WorkerJoined(worker.id, worker.name))
        return outputs

    def _welcome(self, worker: WorkerRecord) -> list[Frame]:
        meta: dict[str, Any] = {"worker": worker.id, "heartbeat": self.config.heartbeat_interval}
        if worker.registration is not None:
            meta["registration"] = worker.registration
        return [CONTROL_ROUTE, *encode(Message(Op.WELCOME, meta=meta))]

    def _bad_worker_message(
        self, identity: bytes, worker: WorkerRecord | None, problem: ProtocolError
    ) -> list[Output]:
        who = f"worker {worker.id} ({worker.name})" if worker else f"unregistered peer {identity!r}"
        log.warning("bad message from %s: %s", who, problem)
        error = error_message(0, type(problem).__name__, str(problem))
        return [ToWorker(identity, [CONTROL_ROUTE, *encode(error)])]

    # ------------------------------------------------------------------ liveness

    def on_tick(self, now: float) -> list[Output]:
        """Send heartbeats that are due, declare workers silent for too long dead and close the
        env groups of client sessions whose lease ran out."""
        self._now = now
        outputs: list[Output] = []
        if now >= self._next_sweep:
            self._next_sweep = now + self._sweep_interval
            for session in self._sessions.expire(now):
                outputs += self._close_expired(session)
        for worker in list(self._live.values()):
            if now - worker.last_seen > self._silence_limit:
                silent = f"silent for {now - worker.last_seen:.3g} s"
                outputs += self._declare_dead(worker, silent)
            elif now >= worker.next_heartbeat:
                outputs.append(ToWorker(worker.identity, [CONTROL_ROUTE, *_HEARTBEAT]))
                worker.next_heartbeat = now + self.config.heartbeat_interval
        return outputs

    def next_timeout(self, now: float) -> float:
        """Seconds until :meth:`on_tick` is next needed (0 when overdue)."""
        due = min(
            (min(w.next_heartbeat, w.last_seen + self._silence_limit) for w in self._live.values()),
            default=now + self.config.heartbeat_interval,
        )
        return max(0.0, min(due, self._next_sweep) - now)

    def _close_expired(self, session: Session) -> list[Output]:
        """Close every env of ``session``'s groups on its live worker and free the slots."""
        outputs: list[Output] = []
        closed = 0
        for group in list(session.groups.values()):
            by_worker: dict[int, list[int]] = {}
            for env_id in range(group.start, group.end):
                worker_id = self._placement.get(env_id)
                if worker_id is not None:
                    by_worker.setdefault(worker_id, []).append(env_id)
            for worker_id, ids in by_worker.items():
                worker = self._workers[worker_id]
                env_ids = np.array(ids, dtype=np.int64)
                released = self._release(worker, env_ids)
                self._sessions.released(group, released)
                closed += released
                if worker.state is WorkerState.DEAD:
                    continue
                close = Message(
                    Op.CLOSE,
                    next(self._own_request_ids),
                    worker=worker_id,
                    env_ids=env_ids,
                    session=session.token,
                    group=group.id,
                )
                outputs.append(ToWorker(worker.identity, [BROKER_ROUTE, *encode(close)]))
        log.warning(
            "client session %s sent nothing for %g s: its lease expired; closed %d env(s)",
            session.name,
            self.config.lease,
            closed,
        )
        return outputs

    def worker_exited(self, identity: bytes, now: float) -> list[Output]:
        """The process of the live worker of socket ``identity`` ended: declare it dead now, not
        after its silence."""
        worker = self._live.get(identity)
        return [] if worker is None else self._declare_dead(worker, "its process exited")

    def undeliverable(self, output: ToWorker, now: float, gone: bool = False) -> list[Output]:
        """``output`` could not be sent. ``gone``: the worker's connection is gone, so it is dead
        now (every request in flight to it answered, its envs ready to be re-placed) rather than
        after its silence; else its queue is full and only the request it carried fails."""
        worker = self._live.get(output.identity)
        if gone and worker is not None:
            return self._declare_dead(worker, "its connection is gone")
        route = bytes(output.frames[0])
        if route == CONTROL_ROUTE:
            # A lost heartbeat or WELCOME: the worker's silence will tell if it is gone.
            log.info("could not send a control message to %r", output.identity)
            return []
        request_id = decode_header(output.frames[1:], self.config.limits).request_id
        key = (route, request_id)
        request = self._in_flight.get(key)
        if request is None:
            return []
        worker = self._workers[request.worker_id]
        self._finish(key, worker)
        message = f"worker {worker.id} ({worker.name}) is unreachable (gone, or its queue is full)"
        return [self._error(route, request_id, WorkerLost.__name__, message, request.env_ids)]

    def _declare_dead(self, worker: WorkerRecord, reason: str) -> list[Output]:
        """``worker`` is dead: answer everything in flight to it."""
        self._registry.declare_dead(worker, reason)
        outputs: list[Output] = []
        message = f"worker {worker.id} ({worker.name}) died with the request in flight ({reason})"
        for key in list(worker.in_flight):
            request = self._in_flight[key]
            self._finish(key, worker)
            outputs.append(
                self._error(key[0], key[1], WorkerLost.__name__, message, request.env_ids)
            )
        outputs.append(WorkerDied(worker.id, worker.name, reason, worker.identity))
        return outputs

    # ------------------------------------------------------------------ bookkeeping

    def _finish(self, key: tuple[bytes, int], worker: WorkerRecord) -> None:
        del self._in_flight[key]
        worker.in_flight.discard(key)
        client = key[0]
        count = self._client_in_flight[client] - 1
        if count:
            self._client_in_flight[client] = count
        else:
            del self._client_in_flight[client]

    def _error(
        self,
        client: bytes,
        request_id: int,
        type_name: str,
        message: str,
        env_ids: EnvIds | None = None,
    ) -> ToClient:
        self._metrics.error(type_name)
        return ToClient(client, encode(error_message(request_id, type_name, message, env_ids)))

    def status(self, now: float | None = None) -> dict[str, Any]:
        """A msgpack-able snapshot: workers (dead ones while env ids are placed on them),
        requests in flight, clients with requests in flight, live env slots, client sessions,
        and the counters since the broker started (``metrics``, see
        :meth:`~broker.metrics.BrokerMetrics.snapshot`).

        ``last_seen_ago`` and ``age_s`` are measured at ``now``, by default the latest clock
        passed to any call.
        """
        now = self._now if now is None else now
        live = self._live.values()
        return {
            "workers": self._registry.status(now),
            "in_flight": len(self._in_flight),
            "clients": len(self._client_in_flight),
            "env_slots": {"used": sum(w.used for w in live), "free": sum(w.free for w in live)},
            "sessions": self._sessions.status(),
            "metrics": self._metrics.snapshot(now),
        }
