"""The broker's client sessions: who owns which env group, leases and slot quotas.

Pure bookkeeping, no messages: :class:`broker.core.BrokerCore` answers the requests.

A client opens a session with ``HELLO`` and gets a random 128-bit token, which every later request
carries (header field ``s``): a session is not a connection, so it survives a TCP reconnect, and a
client's background heartbeat may come over a socket of its own. With CURVE on, a session is bound
to the client key that opened it, so a token seen on the wire is no use to another key.

A group is the env ids one ``ALLOC`` gave out. They come from one counter in one call, so they
are the contiguous range ``[start, end)``, and the group's id is its first env id (unique in the
broker's lifetime, as env ids are). Checking that a request's env ids are its own group's is then
two comparisons per request, whatever the batch size; never a lookup per env id.

A session's lease runs for ``lease`` seconds from its latest request (heartbeats included). When
it runs out, the core closes the session's groups; the token is remembered for a while, so that a
late request gets :class:`LeaseExpired` rather than :class:`UnknownSession`.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

from openenv_zmq.errors import LeaseExpired, NotOwner, QuotaExceeded, RemoteError, UnknownSession
from openenv_zmq.protocol import EnvIds
from openenv_zmq.protocol.schema import SESSION_BYTES

SMALL_BATCH = 64
"""Up to this many env ids, Python's min and max of a list beat numpy's reductions, whose fixed
cost (about 3 us each) would dominate a small batch's routing."""
EXPIRED_TOKENS_KEPT = 65_536
"""Expired sessions remembered, to answer their late requests with :class:`LeaseExpired`."""


@dataclass(slots=True, eq=False)
class Group:
    """The env ids ``[start, end)`` made by one ALLOC of ``session``."""

    session: Session
    start: int
    end: int
    placed: int
    """How many of its env ids are still placed on a worker (closed ones are not)."""

    @property
    def id(self) -> int:
        return self.start


@dataclass(slots=True, eq=False)
class Session:
    token: bytes
    key: str | None
    """The CURVE public key (z85) that opened it; ``None`` without CURVE."""
    lease_until: float
    groups: dict[int, Group] = field(default_factory=dict)
    envs: int = 0
    """Env ids placed for it, over all its groups: what its quota counts."""

    @property
    def name(self) -> str:
        """A short form of the token for logs (never the whole secret)."""
        return self.token[:4].hex()


class SessionTable:
    """Client sessions by token and env groups by id."""

    def __init__(self, lease: float, max_envs: int | None, max_sessions: int) -> None:
        self.lease = lease
        self.max_envs = max_envs
        self.max_sessions = max_sessions
        self._sessions: dict[bytes, Session] = {}
        self._groups: dict[int, Group] = {}
        self._expired: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, key: str | None, now: float) -> Session:
        """A new session for a client of ``key``. Raises :class:`RemoteError` when the table is
        full: each session costs memory until its lease runs out."""
        if len(self._sessions) >= self.max_sessions:
            raise RemoteError(
                f"{len(self._sessions):,} client sessions are open, the most this broker keeps;"
                " try again once idle ones expire"
            )
        token = secrets.token_bytes(SESSION_BYTES)
        session = Session(token, key, now + self.lease)
        self._sessions[token] = session
        return session

    def find(self, token: bytes, key: str | None, now: float) -> Session:
        """The session of ``token`` for a client of ``key``, its lease renewed.

        Raises :class:`LeaseExpired`, :class:`UnknownSession`, or :class:`NotOwner` when the
        session was opened with another key.
        """
        session = self._sessions.get(token)
        if session is None:
            if token in self._expired:
                raise self._expired_error(token)
            raise UnknownSession(
                "this broker issued no such client session: it restarted since, or the token"
                " is forged"
            )
        if session.key != key:
            raise NotOwner(f"client session {session.name} belongs to another client key")
        if session.lease_until <= now:
            # Run out, though not yet swept: never revived, whatever the sweep's timing.
            raise self._expired_error(token)
        session.lease_until = now + self.lease
        return session

    def _expired_error(self, token: bytes) -> LeaseExpired:
        return LeaseExpired(
            f"client session {token[:4].hex()} sent nothing for over {self.lease:g} s:"
            " its lease expired and its env groups were closed; make them again"
        )

    def group(self, session: Session, group_id: int, env_ids: EnvIds | None) -> Group | None:
        """The group ``group_id`` of ``session``, checked to hold every one of ``env_ids``;
        ``None`` when the broker has no such group (closed, or never made in its lifetime).

        Raises :class:`NotOwner` when the group is another session's or ``env_ids`` go past it.
        """
        group = self._groups.get(group_id)
        if group is None:
            return None
        if group.session is not session:
            raise NotOwner(f"env group {group_id} belongs to another client session")
        if env_ids is not None and len(env_ids):
            if len(env_ids) <= SMALL_BATCH:
                ids = env_ids.tolist()
                low, high = min(ids), max(ids)
            else:
                low, high = int(env_ids.min()), int(env_ids.max())
            if low < group.start or high >= group.end:
                outside = low if low < group.start else high
                raise NotOwner(f"env id {outside} is not in env group {group_id}")
        return group

    def check_quota(self, session: Session, num_envs: int) -> None:
        """Raises :class:`QuotaExceeded` when ``num_envs`` more would take ``session`` over."""
        if self.max_envs is not None and session.envs + num_envs > self.max_envs:
            raise QuotaExceeded(
                f"{num_envs:,} more envs would give this client session {session.envs + num_envs:,}"
                f"; the broker allows {self.max_envs:,} per client (--max-envs-per-client)"
            )

    def add_group(self, session: Session, start: int, count: int) -> Group:
        group = Group(session, start, start + count, count)
        session.groups[group.id] = group
        session.envs += count
        self._groups[group.id] = group
        return group

    def released(self, group: Group, count: int) -> None:
        """``count`` env ids of ``group`` are no longer placed; the group ends with its last."""
        group.placed -= count
        group.session.envs -= count
        if group.placed <= 0:
            del self._groups[group.id]
            del group.session.groups[group.id]

    def expire(self, now: float) -> list[Session]:
        """Remove and return the sessions whose lease ran out by ``now``; their groups stay
        for the caller to close (:meth:`released`)."""
        expired = [s for s in self._sessions.values() if s.lease_until <= now]
        for session in expired:
            del self._sessions[session.token]
            self._expired[session.token] = None
            if len(self._expired) > EXPIRED_TOKENS_KEPT:
                self._expired.popitem(last=False)
        return expired

    def status(self) -> dict[str, int]:
        return {
            "live": len(self._sessions),
            "groups": len(self._groups),
            "envs": sum(s.envs for s in self._sessions.values()),
        }
