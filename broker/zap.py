"""The broker's ZAP handler: which CURVE keys may use the frontend and which the backend.

libzmq asks the ZAP handler of a socket's context (RFC 27, ``inproc://zeromq.zap.01``) about
every CURVE handshake, naming the socket's ZAP domain, the peer's address and its public key.
The frontend and the backend have domains of their own, each with its own allowlist: a client
key cannot register a worker, nor a worker key step envs. An admitted peer's key, z85 text,
becomes the connection's ``User-Id``, which libzmq attaches to every message it receives on it
(``frame.get("User-Id")``): the broker binds a client's session to it.

A peer that is refused is logged at WARNING, naming the domain and the key, or, for a peer that
never got as far as asking (a plain socket, the wrong broker key), what the socket's monitor
saw. A refused peer reconnects every 100 ms, so each kind of refusal is logged once and then at
most every :data:`REPEAT_SECONDS`, with a count.

The allowlists are re-read when their folder changes (:class:`Allowlist`), checked with a
``stat`` of the folder and its files on each handshake: connections are rare next to messages.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from broker.keys import BrokerKeys, Role
from openenv_zmq.curve import PUBLIC_SUFFIX, read_public
from openenv_zmq.errors import CurveKeyError

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
"""Where libzmq looks for the ZAP handler of a context (RFC 27)."""
ZAP_VERSION = b"1.0"
DOMAINS = {Role.CLIENT: "openenv-clients", Role.WORKER: "openenv-workers"}
"""The ZAP domain of the frontend (clients) and of the backend (workers)."""
REPEAT_SECONDS = 60.0
"""A refusal repeated within this long is counted, not logged again."""
MAX_REMEMBERED = 1024
MAX_NEW_KINDS = 32
"""Kinds first logged per interval, all kinds together: a peer holding the broker's public key
(every bundle has it) can offer a fresh key at each handshake, and must not grow the log by a
line each. Further new kinds are held back and counted in the next line logged."""
"""Refusals remembered for counting: a flood of fresh keys must not grow memory without end."""
POLL_MS = 100
"""Longest the handler waits before it checks whether it must stop."""
LOCAL_PEER = "started by this broker"
"""How the log names the in-memory key of the broker's own workers or gateway."""
CONTAINER_PEER = "a worker container of this broker"

_HANDSHAKE_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
_NOT_CURVE = zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH

Signature = tuple[tuple[str, int, int, int], ...]


class Allowlist:
    """The public keys of the ``*.key`` files in ``folder`` and the ``extra`` keys given in
    memory, each with a name for the log (its file's stem).

    The folder is listed again on every lookup; when any file was added, removed, replaced or
    changed (name, inode, size and mtime) it is read again. A file that is not a valid key is
    skipped with a warning; a folder that is gone admits only the ``extra`` keys (fail closed).
    """

    def __init__(self, folder: Path, extra: Mapping[bytes, str] | None = None) -> None:
        self.folder = folder
        self._extra = dict(extra or {})
        self._keys: dict[bytes, str] = dict(self._extra)
        self._signature: Signature | None = None

    def name_of(self, key: bytes) -> str | None:
        """The name of the z85 ``key`` if it is admitted now, else ``None``."""
        self._refresh()
        return self._keys.get(key)

    def _refresh(self) -> None:
        signature = self._scan()
        if signature == self._signature:
            return
        keys = dict(self._extra)
        for name, *_ in signature:
            try:
                keys[read_public(self.folder / name)] = name.removesuffix(PUBLIC_SUFFIX)
            except CurveKeyError as exc:
                log.warning("skipping an allowlist entry: %s", exc)
        if self._signature is not None:
            log.info("re-read %s: %d key(s) admitted", self.folder, len(keys))
        self._keys, self._signature = keys, signature

    def _scan(self) -> Signature:
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            if self._signature != ():
                log.error(
                    "cannot list the allowlist %s (%s): admitting none of it", self.folder, exc
                )
            return ()
        found = []
        for entry in entries:
            if not entry.name.endswith(PUBLIC_SUFFIX) or entry.name.startswith("."):
                continue
            with contextlib.suppress(OSError):  # removed between listing and stat
                st = entry.stat()
                found.append((entry.name, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(sorted(found))


class RepeatLimiter:
    """Says whether an event of a kind should be logged now: the first one of a kind, then at
    most one every ``interval`` seconds, with how many were held back meanwhile."""

    def __init__(
        self, interval: float = REPEAT_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self.clock = clock
        self._seen: dict[object, tuple[float, int]] = {}
        self._window = (-interval, 0)
        """(start, new kinds logged since) of the current interval, all kinds together."""
        self._overflow = 0
        """New kinds held back by :data:`MAX_NEW_KINDS`, not yet told of."""

    def check(self, kind: object) -> int | None:
        """``None`` to stay quiet, else how many events were held back since the last line: of
        ``kind``, and of new kinds over :data:`MAX_NEW_KINDS` an interval."""
        now = self.clock()
        last = self._seen.get(kind)
        if last is not None and now - last[0] < self.interval:
            self._seen[kind] = (last[0], last[1] + 1)
            return None
        if last is None:
            start, logged = self._window
            if now - start >= self.interval:
                start, logged = now, 0
            if logged >= MAX_NEW_KINDS:
                self._overflow += 1
                return None
            self._window = (start, logged + 1)
            if len(self._seen) >= MAX_REMEMBERED:
                self._forget(now)
        self._seen[kind] = (now, 0)
        held_back = (0 if last is None else last[1]) + self._overflow
        self._overflow = 0
        return held_back

    def _forget(self, now: float) -> None:
        self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.interval}
        if len(self._seen) >= MAX_REMEMBERED:
            self._seen.clear()


@dataclass(frozen=True)
class ZapRequest:
    """The parts of a ZAP request the decision needs."""

    request_id: bytes
    domain: str
    address: str
    mechanism: bytes
    credentials: tuple[bytes, ...]

    @classmethod
    def parse(cls, frames: list[bytes]) -> ZapRequest:
        """Raises :class:`ValueError` for a request that is not ZAP 1.0."""
        if len(frames) < 6 or frames[0] != ZAP_VERSION:
            raise ValueError(f"not a ZAP {ZAP_VERSION.decode()} request: {frames[:2]!r}")
        _, request_id, domain, address, _identity, mechanism, *credentials = frames
        return cls(
            request_id,
            domain.decode(errors="replace"),
            address.decode(errors="replace"),
            mechanism,
            tuple(credentials),
        )


def reply(request_id: bytes, status: bytes, text: str, user_id: bytes = b"") -> list[bytes]:
    """A ZAP reply: ``200`` with the peer's user id, or ``400`` (refused) / ``500`` (failed)."""
    return [ZAP_VERSION, request_id, status, text.encode(), user_id, b""]


class Gatekeeper:
    """Answers ZAP requests from the allowlist of each domain, and logs refusals.

    No sockets: :class:`ZapHandler` feeds it the requests libzmq sends and sends its replies.
    """

    def __init__(
        self,
        allowlists: Mapping[str, Allowlist],
        limiter: RepeatLimiter | None = None,
        ipc_only: frozenset[bytes] = frozenset(),
    ) -> None:
        self.allowlists = dict(allowlists)
        self.limiter = limiter or RepeatLimiter()
        self.ipc_only = ipc_only
        """z85 keys admitted only from peers without an IP address: libzmq names a TCP peer by
        its IP address, an ``ipc://`` peer by its credentials (``localhost:uid:gid:pid``)."""

    def answer(self, frames: list[bytes]) -> list[bytes]:
        """The reply to the ZAP request ``frames``; admitted peers get their key as user id."""
        try:
            request = ZapRequest.parse(frames)
        except ValueError as exc:
            log.error("refused a malformed ZAP request: %s", exc)
            return reply(frames[1] if len(frames) > 1 else b"", b"500", "malformed request")
        allowlist = self.allowlists.get(request.domain)
        if allowlist is None or request.mechanism != b"CURVE" or len(request.credentials) != 1:
            # Only the broker's own sockets ask, each with a domain and CURVE: never expected.
            self._refused(request, f"{request.mechanism.decode(errors='replace')} peer", "")
            return reply(request.request_id, b"400", "not admitted")
        key = z85.encode(request.credentials[0])
        name = allowlist.name_of(key)
        if name is None:
            self._refused(request, key.decode(), self._elsewhere(key, request.domain))
            return reply(request.request_id, b"400", "key not admitted")
        if key in self.ipc_only and _is_ip_address(request.address):
            self._refused(request, key.decode(), f" ({name}: admitted over ipc:// only)")
            return reply(request.request_id, b"400", "key not admitted here")
        log.info(
            "admitted key %s (%s) from %s on %s",
            key.decode(),
            name,
            request.address,
            request.domain,
        )
        return reply(request.request_id, b"200", "OK", key)

    def _elsewhere(self, key: bytes, domain: str) -> str:
        """Why a key admitted in another domain is refused in this one, else nothing."""
        for other, allowlist in self.allowlists.items():
            name = allowlist.name_of(key) if other != domain else None
            if name is not None:
                return f" (it is admitted on {other} as {name!r}, and only there)"
        return ""

    def _refused(self, request: ZapRequest, who: str, why: str) -> None:
        held_back = self.limiter.check((request.domain, who))
        if held_back is None:
            return
        allowlist = self.allowlists.get(request.domain)
        where = f"not in {allowlist.folder}" if allowlist is not None else "an unknown domain"
        log.warning(
            "refused key %s from %s on %s: %s%s%s",
            who,
            request.address,
            request.domain,
            where,
            why,
            _repeats(held_back),
        )

    def handshake_failed(self, domain: str, endpoint: str, event: int, value: int) -> None:
        """Log what a socket's monitor saw of a peer refused before ZAP was asked."""
        if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            # Also what a port scan or a TCP health check looks like: not worth a warning.
            level, why = logging.INFO, f"its handshake broke off ({os.strerror(value)})"
        elif value == _NOT_CURVE:
            level, why = logging.WARNING, "it does not use CURVE (a plain socket: no curve keys)"
        else:
            level = logging.WARNING
            why = f"its CURVE handshake failed (protocol error {value:#x}: another broker's key?)"
        held_back = self.limiter.check((domain, event, value))
        if held_back is not None:
            log.log(
                level,
                "refused a peer on %s at %s: %s%s",
                domain,
                endpoint,
                why,
                _repeats(held_back),
            )


def _repeats(held_back: int) -> str:
    return f"; {held_back} more like it in the last {REPEAT_SECONDS:g} s" if held_back else ""


class ZapHandler:
    """Answers a context's ZAP requests on a thread of its own, with a :class:`Gatekeeper`.

    Call order: :meth:`bind` before any CURVE server socket of the context binds (until then
    ``ZAP_ENFORCE_DOMAIN`` refuses every peer), :meth:`watch` each such socket, :meth:`start`,
    and :meth:`close` after those sockets are closed and before the context is terminated.
    """

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], gatekeeper: Gatekeeper) -> None:
        self.context = context
        self.gatekeeper = gatekeeper
        self._zap: zmq.Socket[bytes] | None = None
        self._monitors: dict[zmq.Socket[bytes], tuple[str, str]] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def bind(self) -> None:
        self._zap = self.context.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        self._zap.bind(ZAP_ENDPOINT)

    def watch(self, socket: zmq.Socket[bytes], domain: str, endpoint: str) -> None:
        """Log the handshakes ``socket`` (bound at ``endpoint``) refuses before asking ZAP."""
        address = f"inproc://openenv-zap-monitor-{id(self)}-{len(self._monitors)}"
        socket.monitor(address, _HANDSHAKE_EVENTS)
        monitor = self.context.socket(zmq.PAIR)
        monitor.setsockopt(zmq.LINGER, 0)
        monitor.connect(address)
        self._monitors[monitor] = (domain, endpoint)

    def start(self) -> None:
        assert self._zap is not None, "bind() first"
        # Sockets made on this thread are used only by the handler's from here on: its start
        # is the memory barrier zmq asks for when a socket changes threads.
        self._thread = threading.Thread(target=self._run, name="zap", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and close its sockets. Idempotent."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for socket in [self._zap, *self._monitors]:
            if socket is not None:
                socket.close(linger=0)
        self._zap, self._monitors = None, {}

    def _run(self) -> None:
        zap = self._zap
        assert zap is not None
        poller = zmq.Poller()
        for socket in [zap, *self._monitors]:
            poller.register(socket, zmq.POLLIN)
        while not self._stopping.is_set():
            for socket, _ in poller.poll(POLL_MS):
                if socket is zap:
                    self._answer(zap)
                else:
                    self._monitored(socket)

    def _answer(self, zap: zmq.Socket[bytes]) -> None:
        frames = zap.recv_multipart()
        try:
            answer = self.gatekeeper.answer(frames)
        except Exception:
            # A REP must answer, and a dead handler would leave every handshake hanging.
            log.exception("the ZAP handler failed; refusing the peer")
            answer = reply(frames[1] if len(frames) > 1 else b"", b"500", "internal error")
        zap.send_multipart(answer)

    def _monitored(self, monitor: zmq.Socket[bytes]) -> None:
        event = parse_monitor_message(monitor.recv_multipart())
        if event["event"] & _HANDSHAKE_EVENTS:
            domain, endpoint = self._monitors[monitor]
            self.gatekeeper.handshake_failed(domain, endpoint, event["event"], event["value"])


def gatekeeper_for(keys: BrokerKeys) -> Gatekeeper:
    """A gatekeeper admitting the keys of ``keys``' allowlists, and the keys of the workers and
    gateway the broker starts itself on their own domain."""
    local = {
        Role.WORKER: {
            keys.local_worker.public: LOCAL_PEER,
            keys.container_worker.public: CONTAINER_PEER,
        },
        Role.CLIENT: {keys.local_client.public: LOCAL_PEER},
    }
    return Gatekeeper(
        {DOMAINS[role]: Allowlist(keys.allowlist(role), local[role]) for role in Role},
        ipc_only=frozenset({keys.container_worker.public}),
    )


def _is_ip_address(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True
