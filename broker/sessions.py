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
SESSIONS_PER_KEY = 1_024
"""Sessions one CURVE client key may hold at once: HELLO costs a client nothing, so without a
bound one admitted key could fill the table and lock every other client out."""
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
        return short(self.token)


def short(token: bytes) -> str:
    """A short form of a session token for logs and messages (never the whole secret)."""
    return token[:4].hex()


@dataclass(slots=True)
class KeyUse:
    """What the sessions of one CURVE client key hold between them."""

    sessions: int = 0
    envs: int = 0


class SessionTable:
    """Client sessions by token and env groups by id."""

    def __init__(self, lease: float, max_envs: int | None, max_sessions: int) -> None:
        self.lease = lease
        self.max_envs = max_envs
        self.max_sessions = max_sessions
        self._sessions: dict[bytes, Session] = {}
        self._groups: dict[int, Group] = {}
        self._expired: OrderedDict[bytes, None] = OrderedDict()
        self._keys: dict[str, KeyUse] = {}
        """Per CURVE client key: a quota is the key's, however many sessions it opens."""

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
        if key is not None:
            use = self._keys.setdefault(key, KeyUse())
            if use.sessions >= SESSIONS_PER_KEY:
                raise RemoteError(
                    f"this client key has {use.sessions:,} sessions open, the most one key may;"
                    " reuse a client, or wait for idle ones to expire"
                )
            use.sessions += 1
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
            f"client session {short(token)} sent nothing for over {self.lease:g} s:"
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
        """Raises :class:`QuotaExceeded` when ``num_envs`` more would take the client over: its
        CURVE key, over all the key's sessions, or without CURVE the session."""
        if self.max_envs is None:
            return
        held, who = session.envs, "client session"
        if session.key is not None:
            held, who = self._keys[session.key].envs, "client key"
        if held + num_envs > self.max_envs:
            raise QuotaExceeded(
                f"{num_envs:,} more envs would give this {who} {held + num_envs:,}; the broker"
                f" allows {self.max_envs:,} per client (--max-envs-per-client)"
            )

    def add_group(self, session: Session, start: int, count: int) -> Group:
        group = Group(session, start, start + count, count)
        session.groups[group.id] = group
        session.envs += count
        if session.key is not None:
            self._keys[session.key].envs += count
        self._groups[group.id] = group
        return group

    def released(self, group: Group, count: int) -> None:
        """``count`` env ids of ``group`` are no longer placed; the group ends with its last."""
        group.placed -= count
        session = group.session
        session.envs -= count
        if session.key is not None:
            self._keys[session.key].envs -= count
            self._drop_key_if_unused(session.key)
        if group.placed <= 0:
            del self._groups[group.id]
            del group.session.groups[group.id]

    def expire(self, now: float) -> list[Session]:
        """Remove and return the sessions whose lease ran out by ``now``; their groups stay
        for the caller to close (:meth:`released`)."""
        expired = [s for s in self._sessions.values() if s.lease_until <= now]
        for session in expired:
            del self._sessions[session.token]
            if session.key is not None:
                self._keys[session.key].sessions -= 1
                self._drop_key_if_unused(session.key)
            self._expired[session.token] = None
            if len(self._expired) > EXPIRED_TOKENS_KEPT:
                self._expired.popitem(last=False)
        return expired

    def _drop_key_if_unused(self, key: str) -> None:
        use = self._keys[key]
        if not use.sessions and not use.envs:
            del self._keys[key]

    def status(self) -> dict[str, int]:
        return {
            "live": len(self._sessions),
            "groups": len(self._groups),
            "envs": sum(s.envs for s in self._sessions.values()),
        }
