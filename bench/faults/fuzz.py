"""The fuzz run: garbage at both of a broker's sockets while a real client steps beside it.

A broker with 2 local echo workers runs as its own process. A :class:`~openenv_zmq.BatchClient`
steps 64 echo envs in a loop in a thread. Meanwhile raw DEALERs send ``messages`` messages drawn
by :class:`~bench.faults.garbage.Garbage`: 90 % at the frontend (from 4 DEALERs, one of them
holding the fuzzer's own session and 4 envs), 10 % at the backend (from 4 DEALERs that are not
workers). At most :data:`WINDOW` frontend requests are unanswered at a time, so that the
measurement is of answers, not of queues.

The invariant: every frontend message is answered, once. One whose request id the broker can
read (``readable_request_id`` of what was sent) is answered with that id; one without is
answered with id 0. The concurrent client sees no error at all and keeps stepping, the broker
and its two original worker processes live on, and ``status`` answers.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import zmq
from echo_env import EchoAction

from bench.faults.cluster import BrokerGone, BrokerProcess, broker_process
from bench.faults.garbage import Garbage, Owned
from bench.faults.report import Row, check, figure
from openenv_zmq import BatchClient, sockets
from openenv_zmq.errors import ProtocolError
from openenv_zmq.protocol import (
    Frame,
    Message,
    Op,
    decode,
    decode_header,
    encode,
    readable_request_id,
)

FRONTEND_SOCKETS = 4
BACKEND_SOCKETS = 4
BACKEND_SHARE = 0.1
WINDOW = 256
"""Frontend requests sent and not yet answered, at most."""
ANSWER_TIMEOUT = 10.0
"""Seconds without any answer after which the unanswered requests are written off."""
CLIENT_ENVS = 64
OWNED_ENVS = 4
CLIENT_TIMEOUT = 30.0
MAX_SECONDS = 900.0
"""A bound on the whole run, whatever ``messages`` is."""


@dataclass
class Stepper:
    """A client stepping ``num_envs`` echo envs in a loop in a thread, counting what it sees."""

    address: str
    num_envs: int = CLIENT_ENVS
    steps: int = 0
    env_errors: Counter[str] = field(default_factory=Counter)
    call_errors: Counter[str] = field(default_factory=Counter)
    failure: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, timeout: float = CLIENT_TIMEOUT) -> None:
        self._thread = threading.Thread(target=self._run, name="stepper", daemon=True)
        self._thread.start()
        self.wait_for_steps(1, timeout)

    def wait_for_steps(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.steps < count and not self.failure and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.steps >= count

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(CLIENT_TIMEOUT)

    def _run(self) -> None:
        try:
            with BatchClient(self.address, timeout=CLIENT_TIMEOUT) as client:
                envs = client.make("echo", num_envs=self.num_envs)
                envs.reset()
                actions = [EchoAction(message="steady")] * self.num_envs
                deadline = time.monotonic() + MAX_SECONDS
                while not self._stop.is_set() and time.monotonic() < deadline:
                    try:
                        result = envs.step(actions)
                    except Exception as exc:  # counted: the figure is how many
                        self.call_errors[type(exc).__name__] += 1
                        time.sleep(0.1)
                        continue
                    self.env_errors.update(type(e).__name__ for e in result.errors.values())
                    self.steps += 1
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"


@dataclass
class FuzzReport:
    messages: int
    seconds: float
    frontend_sent: int
    backend_sent: int
    kinds: dict[str, int]
    """Messages sent by kind (see :mod:`bench.faults.garbage`)."""
    answer_types: dict[str, int]
    """Frontend answers by op (``REPLY``) or error type."""
    with_id: int
    """Frontend messages whose request id the broker can read."""
    answered_with_id: int
    without_id: int
    answered_without_id: int
    unexpected_answers: int
    """Answers naming a request id that was not awaited (a second answer, say)."""
    backend_answers: int
    client_steps: int
    client_errors: dict[str, int]
    client_failure: str
    rss_before_mib: float
    rss_after_mib: float
    broker_alive: bool
    workers_kept: int
    """Of the 2 worker processes there at the start, how many are alive and live at the end."""
    status_ok: bool
    live_workers: int
    sessions_live: int

    def as_dict(self) -> dict[str, Any]:
        return {"measurement": "fuzz", **asdict(self)}

    def rows(self) -> list[Row]:
        return [
            figure(
                "messages sent: frontend + backend",
                f"{self.frontend_sent:,} + {self.backend_sent:,}",
            ),
            figure("messages/s", (self.frontend_sent + self.backend_sent) / self.seconds),
            check(
                "frontend answered: request id readable",
                f"{self.answered_with_id:,} of {self.with_id:,}",
                f"{self.with_id:,} of {self.with_id:,}",
                self.answered_with_id == self.with_id,
            ),
            check(
                "frontend answered: no readable id (as 0)",
                f"{self.answered_without_id:,} of {self.without_id:,}",
                f"{self.without_id:,} of {self.without_id:,}",
                self.answered_without_id == self.without_id,
            ),
            check("answers to no awaited request (extra)", self.unexpected_answers, 0),
            figure("answers to backend messages", self.backend_answers),
            check("client beside it (64 envs): errors", self.client_errors, {}),
            check("client beside it: failed", self.client_failure or "no", "no"),
            figure("client beside it: steps", self.client_steps),
            figure(
                "broker RSS before -> after (MiB)",
                f"{self.rss_before_mib:.1f} -> {self.rss_after_mib:.1f}",
            ),
            check("broker alive", self.broker_alive, True),
            check("the first 2 worker processes still live", self.workers_kept, 2),
            check("status answers", self.status_ok, True),
            check("live workers (status)", self.live_workers, 2),
            figure("sessions live after (garbage HELLOs)", self.sessions_live),
        ]


def _ask(socket: zmq.Socket[bytes], message: Message) -> Message:
    socket.send_multipart(encode(message))
    if not socket.poll(int(CLIENT_TIMEOUT * 1000)):
        raise BrokerGone(f"no answer to the fuzzer's {message.op.name}")
    answer = decode(socket.recv_multipart())
    if answer.op is not Op.REPLY:
        raise BrokerGone(f"the fuzzer's {message.op.name} failed: {answer.meta}")
    return answer


def _own_envs(socket: zmq.Socket[bytes]) -> Owned:
    """A session and :data:`OWNED_ENVS` echo envs made with raw HELLO, ALLOC and CREATE."""
    session = _ask(socket, Message(Op.HELLO, 1)).meta["session"]
    alloc = Message(Op.ALLOC, 2, meta={"env": "echo", "num_envs": OWNED_ENVS}, session=session)
    answer = _ask(socket, alloc)
    assert answer.env_ids is not None and answer.group is not None
    owned = Owned(session, answer.group, answer.env_ids.copy(), answer.parts["workers"].copy())
    for n, (worker, ids) in enumerate(owned.by_worker().items()):
        create = Message(
            Op.CREATE, 3 + n, worker, ids, meta={"env": "echo"}, session=session, group=owned.group
        )
        _ask(socket, create)
    return owned


def _answer_type(frames: list[Frame]) -> str:
    try:
        answer = decode_header(frames)
    except ProtocolError:
        return "undecodable"
    return str(answer.meta["type"]) if answer.op is Op.ERROR else answer.op.name


class _Doors:
    """The fuzzer's DEALERs at the broker's two sockets, what they sent and what came back.

    Each frontend DEALER awaits one answer per message sent, by the request id the broker can
    read of it (0 when it can read none: the broker answers those as request 0)."""

    def __init__(self, broker: BrokerProcess) -> None:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.fronts: list[zmq.Socket[bytes]] = []
        self.backs: list[zmq.Socket[bytes]] = []
        self.poller = zmq.Poller()
        try:
            for address, count, sockets_ in (
                (broker.frontend, FRONTEND_SOCKETS, self.fronts),
                (broker.backend, BACKEND_SOCKETS, self.backs),
            ):
                for _ in range(count):
                    sockets_.append(sockets.configure(context.socket(zmq.DEALER)))
                    sockets_[-1].connect(address)
                    self.poller.register(sockets_[-1], zmq.POLLIN)
        except BaseException:
            self.close()
            raise
        self.next_id = [100] * FRONTEND_SOCKETS
        self.awaited: dict[zmq.Socket[bytes], Counter[int]] = {s: Counter() for s in self.fronts}
        self.counts = Counter[str]()
        self.answer_types = Counter[str]()
        """Frontend answers by op (``REPLY``) or error type."""

    def request_id(self, front: int) -> int:
        """A fresh request id for frontend DEALER ``front``."""
        self.next_id[front] += 1
        return self.next_id[front]

    def send_front(self, front: int, frames: list[Frame]) -> None:
        request_id = readable_request_id(frames)
        self.awaited[self.fronts[front]][request_id] += 1
        self.counts["with id" if request_id else "without id"] += 1
        self.fronts[front].send_multipart(frames)

    def send_back(self, back: int, frames: list[Frame]) -> None:
        self.counts["backend sent"] += 1
        self.backs[back].send_multipart(frames)

    @property
    def unanswered(self) -> int:
        c = self.counts
        return c["with id"] + c["without id"] - c["answered with id"] - c["answered without id"]

    def receive(self, timeout_ms: int) -> int:
        """Take every answer waiting (waiting up to ``timeout_ms`` for one); how many came."""
        got = 0
        for socket, _ in self.poller.poll(timeout_ms):
            while True:
                try:
                    frames = socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                got += 1
                awaited = self.awaited.get(socket)
                if awaited is None:
                    self.counts["backend answers"] += 1
                    continue
                request_id = readable_request_id(frames)
                self.answer_types[_answer_type(frames)] += 1
                if awaited[request_id] > 0:
                    awaited[request_id] -= 1
                    if not awaited[request_id]:
                        del awaited[request_id]
                    self.counts["answered with id" if request_id else "answered without id"] += 1
                else:
                    self.counts["unexpected"] += 1
        return got

    def close(self) -> None:
        for socket in self.fronts + self.backs:
            socket.close(linger=0)


def measure_fuzz(messages: int, seed: int = 0) -> FuzzReport:
    """Send ``messages`` fuzz messages at a fresh broker; see the module docstring."""
    with broker_process() as broker:
        return _fuzz(broker, messages, random.Random(seed))


def _fuzz(broker: BrokerProcess, messages: int, rng: random.Random) -> FuzzReport:
    workers = broker.workers()
    original = {w["pid"] for w in workers}
    stepper = Stepper(broker.frontend)
    doors: _Doors | None = None
    try:
        stepper.start()
        rss_before = broker.rss_mib()
        doors = _Doors(broker)
        garbage = Garbage(rng, _own_envs(doors.fronts[0]), [w["id"] for w in workers])
        written_off = 0
        started = time.monotonic()
        for n in range(messages):
            if time.monotonic() - started > MAX_SECONDS:
                break
            if rng.random() < BACKEND_SHARE:
                doors.send_back(rng.randrange(BACKEND_SOCKETS), garbage.backend())
            else:
                front = rng.randrange(FRONTEND_SOCKETS)
                doors.send_front(front, garbage.frontend(doors.request_id(front)))
            doors.receive(0)
            written_off = min(written_off, doors.unanswered)  # late answers came after all
            while doors.unanswered - written_off >= WINDOW:
                if not doors.receive(int(ANSWER_TIMEOUT * 1000)):
                    written_off = doors.unanswered  # counted unanswered; sending goes on
            if n % 1000 == 0 and not broker.running():
                break
        quiet_since = time.monotonic()
        while doors.unanswered and time.monotonic() - quiet_since < ANSWER_TIMEOUT:
            if doors.receive(100):
                quiet_since = time.monotonic()
        doors.receive(200)  # a second answer to any request would arrive now
        seconds = time.monotonic() - started
        stepper.wait_for_steps(stepper.steps + 1, CLIENT_TIMEOUT)  # it steps on after it all
    finally:
        stepper.stop()
        if doors is not None:
            doors.close()
    counts = doors.counts
    rss_after = broker.rss_mib()
    try:
        info = broker.status()
        own = broker.children()
        live = [w for w in info["workers"] if w["state"] == "READY" and w["pid"] in own]
        status_ok = True
    except BrokerGone:
        info, live, status_ok = {"sessions": {"live": -1}}, [], False
    return FuzzReport(
        messages=messages,
        seconds=seconds,
        frontend_sent=counts["with id"] + counts["without id"],
        backend_sent=counts["backend sent"],
        kinds=dict(garbage.drawn),
        answer_types=dict(doors.answer_types),
        with_id=counts["with id"],
        answered_with_id=counts["answered with id"],
        without_id=counts["without id"],
        answered_without_id=counts["answered without id"],
        unexpected_answers=counts["unexpected"],
        backend_answers=counts["backend answers"],
        client_steps=stepper.steps,
        client_errors=dict(stepper.env_errors + stepper.call_errors),
        client_failure=stepper.failure,
        rss_before_mib=rss_before,
        rss_after_mib=rss_after,
        broker_alive=broker.running(),
        workers_kept=len({w["pid"] for w in live} & original),
        status_ok=status_ok,
        live_workers=len(live),
        sessions_live=int(info["sessions"]["live"]),
    )
