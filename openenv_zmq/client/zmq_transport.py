"""The zmq transports: one DEALER socket to the broker's frontend, blocking or asyncio.

Each opens a client session (HELLO) before its first request that acts for one (any but PING
and STATUS), again when the broker answers that it knows the session no more, and then keeps a
:class:`~openenv_zmq.client.pulse.Pulse` beating on a second DEALER: a call whose broker stops
answering it raises :class:`BrokerLost`.

With CURVE keys both DEALERs are CURVE clients: a broker that refuses their key, or holds another
key than the one they expect, never answers, and the client's first HELLO times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Sequence

import zmq

from openenv_zmq.client.batching import raise_if_error
from openenv_zmq.client.pulse import STOP_CHECK_S, Pulse
from openenv_zmq.client.requests import RequestTable, needs_session, unknown_session
from openenv_zmq.client.transport import DEFAULT_TIMEOUT, late_answers, no_answer
from openenv_zmq.curve import CurveKeys
from openenv_zmq.errors import BrokerLost, TransportError
from openenv_zmq.protocol import DEFAULT_LIMITS, Frame, Limits, Message
from openenv_zmq.sockets import (
    HIGH_WATER_MARK,
    configure,
    curve_client,
    queued,
    readable,
    send_frames,
)


def _connected(
    socket: zmq.Socket[bytes],
    address: str,
    limits: Limits,
    curve: CurveKeys | None,
    high_water_mark: int = HIGH_WATER_MARK,
) -> zmq.Socket[bytes]:
    configure(socket, high_water_mark, limits)
    if curve is not None:
        curve_client(socket, curve)
    socket.connect(address)
    return socket


def _dealer(address: str, limits: Limits, curve: CurveKeys | None) -> zmq.Socket[bytes]:
    dealer: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    return _connected(dealer, address, limits, curve)


HEARTBEATS_QUEUED = 1
"""A ping that cannot go now is dropped, not queued: pings piled up during an outage would reach
the next broker in a burst."""
RECEIVE_BATCH = 1_000
"""Answers read at most before the sync client checks its call's deadline again, and between
two polls of the async reader."""


def _send_all(
    socket: zmq.Socket[bytes],
    stamped: list[tuple[int, list[Frame]]],
    table: RequestTable,
    address: str,
) -> None:
    """Send each stamped request; when one cannot go (a full queue, a closed socket), none of
    them is awaited any more and :class:`TransportError` says how many went out before it:
    their envs step, and their answers are dropped."""
    for sent, (_, frames) in enumerate(stamped):
        try:
            send_frames(socket, frames)
        except zmq.ZMQError as exc:
            table.forget([request_id for request_id, _ in stamped])
            why = "is full" if isinstance(exc, zmq.Again) else f"failed: {exc}"
            raise TransportError(
                f"send queue to {address} {why} ({sent} of {len(stamped)} request(s) went out"
                " before it; their answers are dropped)"
            ) from None


def _heartbeat(
    transport: object, table: RequestTable, address: str, limits: Limits, curve: CurveKeys | None
) -> Pulse:
    """The heartbeat of ``transport``'s session, on a DEALER of its own. It holds the table, not
    the transport, and stops when the transport is collected: a client dropped without
    ``close()`` must not keep its envs' lease alive for as long as the process lives."""
    dealer: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.IMMEDIATE, 1)
    _connected(dealer, address, limits, curve, HEARTBEATS_QUEUED)
    pulse = Pulse(dealer, lambda: table.session, table.heartbeat_s, address, limits)
    weakref.finalize(transport, pulse.stop)
    return pulse


class ZmqTransport:
    """A :class:`~openenv_zmq.client.transport.Transport` over one DEALER connected to
    ``address`` (a CURVE client holding ``curve`` when given); answers are read whenever a call
    waits."""

    def __init__(
        self,
        address: str,
        timeout: float = DEFAULT_TIMEOUT,
        limits: Limits = DEFAULT_LIMITS,
        curve: CurveKeys | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._limits = limits
        self._table = RequestTable(limits)
        self._curve = curve
        self._socket = _dealer(address, limits, curve)
        self._pulse: Pulse | None = None

    @property
    def session(self) -> bytes | None:
        """The client session's token, once the broker has answered HELLO."""
        return self._table.session

    def send(self, messages: Sequence[Message]) -> list[int]:
        """Encode every message, then send each; raises :class:`ProtocolError` before sending
        anything when one cannot be encoded."""
        return self._send(messages, self.timeout)

    def _send(self, messages: Sequence[Message], timeout: float) -> list[int]:
        if self._table.session is None and needs_session(messages):
            self._open_session(timeout)
        return self._send_stamped(self._table.stamp_all(messages))

    def _send_stamped(self, stamped: list[tuple[int, list[Frame]]]) -> list[int]:
        _send_all(self._socket, stamped, self._table, self.address)
        return [request_id for request_id, _ in stamped]

    def _open_session(self, timeout: float) -> None:
        """HELLO, then the heartbeat. Raises :class:`RequestTimeout` when nobody answers."""
        [request_id] = self._send_stamped([self._table.hello()])
        if not self._wait([request_id], 1, timeout):
            self._table.give_up([request_id])
            raise no_answer(self.address, timeout)
        raise_if_error(self._table.take([request_id])[request_id])
        if self._pulse is None:
            self._pulse = _heartbeat(self, self._table, self.address, self._limits, self._curve)

    def _wait(self, request_ids: Sequence[int], needed: int, timeout: float) -> bool:
        """Receive until ``needed`` of ``request_ids`` have answers; ``False`` on timeout.
        Raises :class:`BrokerLost` when the broker stops answering heartbeats meanwhile."""
        arrived = self._table.arrived
        start = time.monotonic()
        deadline = start + timeout
        while (done := sum(rid in arrived for rid in request_ids)) < needed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._pulse is not None:
                self._pulse.check(start, len(request_ids) - done)
                remaining = min(remaining, STOP_CHECK_S)
            if readable(self._socket, int(remaining * 1000) + 1):
                for frames in queued(self._socket, RECEIVE_BATCH):
                    self._table.receive(frames)
        return True

    def exchange(self, messages: list[Message], timeout: float | None = None) -> list[Message]:
        timeout = self.timeout if timeout is None else timeout
        answers = self._exchange(messages, timeout)
        again = unknown_session(answers)
        if again:
            # A restarted broker: nothing was done, so the same requests go in a new session.
            resent = self._exchange([messages[i] for i in again], timeout)
            for i, answer in zip(again, resent, strict=True):
                answers[i] = answer
        return answers

    def _exchange(self, messages: Sequence[Message], timeout: float) -> list[Message]:
        request_ids = self._send(messages, timeout)
        try:
            answered = self._wait(request_ids, len(request_ids), timeout)
        except BaseException:
            self._table.give_up(request_ids)
            self._table.take(request_ids)
            raise
        if not answered:
            missing = self._table.give_up(request_ids)
            self._table.take(request_ids)
            raise late_answers(len(missing), len(request_ids), self.address, timeout)
        answers = self._table.take(request_ids)
        return [answers[rid] for rid in request_ids]

    def wait_any(
        self, request_ids: Sequence[int], timeout: float | None = None
    ) -> dict[int, Message]:
        timeout = self.timeout if timeout is None else timeout
        try:
            answered = self._wait(request_ids, 1, timeout)
        except BrokerLost:
            # Their answers went with the broker: awaited still, they would never come.
            self._table.give_up(request_ids)
            self._table.take(request_ids)
            raise
        if not answered:
            raise no_answer(self.address, timeout)
        return self._table.take(request_ids)

    def close(self) -> None:
        if self._pulse is not None:
            self._pulse.close()
        self._socket.close(linger=0)


class AsyncZmqTransport:
    """An :class:`~openenv_zmq.client.transport.AsyncTransport` over one DEALER (a CURVE client
    holding ``curve`` when given): a reader task hands each answer to the future of its request,
    so many coroutines may share it."""

    def __init__(
        self,
        address: str,
        timeout: float = DEFAULT_TIMEOUT,
        limits: Limits = DEFAULT_LIMITS,
        curve: CurveKeys | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._limits = limits
        self._table = RequestTable(limits)
        self._waiters: dict[int, asyncio.Future[Message]] = {}
        """One per sent request, removed when its caller collects or gives up on the answer."""
        self._curve = curve
        # A plain socket watched by the event loop (see _read): zmq.asyncio builds futures and
        # flag enums for every message, which cost a third of an async step's CPU.
        self._socket = _dealer(address, limits, curve)
        self._fd = self._socket.FD
        self._changed = asyncio.Event()
        """Set when the socket may have answers: its FD signalled, or a send may have taken
        that signal."""
        self._reader: asyncio.Task[None] | None = None
        """Reads answers on the event loop the transport was first used from."""
        self._opening: asyncio.Future[None] | None = None
        """The HELLO under way, which every coroutine needing a session awaits."""
        self._pulse: Pulse | None = None

    @property
    def session(self) -> bytes | None:
        return self._table.session

    async def _read(self) -> None:
        """Hand each answer to the future of its request, for as long as the transport lives.

        A zmq socket's FD is edge-triggered: it says only that the socket's state may have
        changed, and any call on the socket (a send too) may consume that signal. So the reader
        reads everything waiting before it waits again, and every send wakes it."""
        socket, changed = self._socket, self._changed
        while True:
            changed.clear()
            while readable(socket):
                for frames in queued(socket, RECEIVE_BATCH):
                    answer = self._table.read(frames)
                    if answer is not None:
                        waiter = self._waiters.get(answer.request_id)
                        if waiter is not None and not waiter.done():
                            waiter.set_result(answer)
            await changed.wait()

    async def send(self, messages: Sequence[Message]) -> list[int]:
        """Encode every message, then send each; raises :class:`ProtocolError` before sending
        anything when one cannot be encoded."""
        return await self._send(messages, self.timeout)

    async def _send(self, messages: Sequence[Message], timeout: float) -> list[int]:
        if self._table.session is None and needs_session(messages):
            if self._opening is None or self._opening.done():
                self._opening = asyncio.ensure_future(self._open_session(timeout))
            # Shielded: one caller given up on must not cancel the others' HELLO.
            await asyncio.shield(self._opening)
        return await self._send_stamped(self._table.stamp_all(messages))

    async def _send_stamped(self, stamped: list[tuple[int, list[Frame]]]) -> list[int]:
        loop = asyncio.get_running_loop()
        if self._reader is None or self._reader.done():
            self._start_reader(loop)
        request_ids = [request_id for request_id, _ in stamped]
        for request_id in request_ids:
            self._waiters[request_id] = loop.create_future()
        try:
            _send_all(self._socket, stamped, self._table, self.address)
        except TransportError:
            for request_id in request_ids:
                self._waiters.pop(request_id, None)
            raise
        finally:
            self._changed.set()
        return request_ids

    def _start_reader(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch the socket's FD on ``loop`` and read answers there. A reader that ended
        (it raised) stops watching and fails the requests it would have answered."""
        self._changed = asyncio.Event()  # an Event belongs to the loop that first waits on it
        loop.add_reader(self._fd, self._changed.set)
        reader = loop.create_task(self._read())

        def ended(task: asyncio.Task[None]) -> None:
            loop.remove_reader(self._fd)
            if task.cancelled():
                return
            error = TransportError(
                f"the answer reader of {self.address} failed: {task.exception()}"
            )
            for waiter in self._waiters.values():
                if not waiter.done():
                    waiter.set_exception(error)

        reader.add_done_callback(ended)
        self._reader = reader

    async def _open_session(self, timeout: float) -> None:
        """HELLO, then the heartbeat. Raises :class:`RequestTimeout` when nobody answers."""
        [request_id] = await self._send_stamped([self._table.hello()])
        waiter = self._waiters[request_id]
        try:
            if not await self._until([waiter], True, timeout):
                self._table.forget([request_id])
                raise no_answer(self.address, timeout)
        finally:
            self._waiters.pop(request_id, None)
        raise_if_error(waiter.result())
        if self._pulse is None:
            self._pulse = _heartbeat(self, self._table, self.address, self._limits, self._curve)

    async def _until(
        self, waiters: Sequence[asyncio.Future[Message]], every: bool, timeout: float
    ) -> bool:
        """Wait until every one of ``waiters`` (or, not ``every``, one) is done; ``False`` after
        ``timeout`` seconds. Raises :class:`BrokerLost` when the broker stops answering
        heartbeats meanwhile."""
        start = time.monotonic()
        deadline = start + timeout
        when = asyncio.ALL_COMPLETED if every else asyncio.FIRST_COMPLETED
        while True:
            pending = [w for w in waiters if not w.done()]
            if not pending or (not every and len(pending) < len(waiters)):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._pulse is not None:
                self._pulse.check(start, len(pending))
                remaining = min(remaining, STOP_CHECK_S)
            await asyncio.wait(pending, timeout=remaining, return_when=when)

    async def exchange(
        self, messages: list[Message], timeout: float | None = None
    ) -> list[Message]:
        timeout = self.timeout if timeout is None else timeout
        answers = await self._exchange(messages, timeout)
        again = unknown_session(answers)
        if again:
            # A restarted broker: nothing was done, so the same requests go in a new session.
            resent = await self._exchange([messages[i] for i in again], timeout)
            for i, answer in zip(again, resent, strict=True):
                answers[i] = answer
        return answers

    async def _exchange(self, messages: Sequence[Message], timeout: float) -> list[Message]:
        request_ids = await self._send(messages, timeout)
        waiters = [self._waiters[rid] for rid in request_ids]
        try:
            if not await self._until(waiters, True, timeout):
                missing = [rid for rid, w in zip(request_ids, waiters, strict=True) if not w.done()]
                raise late_answers(len(missing), len(request_ids), self.address, timeout)
            return [waiter.result() for waiter in waiters]
        except BaseException:
            self._table.forget(
                [rid for rid, w in zip(request_ids, waiters, strict=True) if not w.done()]
            )
            raise
        finally:
            for rid in request_ids:
                self._waiters.pop(rid, None)

    async def wait_any(
        self, request_ids: Sequence[int], timeout: float | None = None
    ) -> dict[int, Message]:
        timeout = self.timeout if timeout is None else timeout
        waiters = [self._waiters[rid] for rid in request_ids]
        try:
            answered = await self._until(waiters, False, timeout)
        except BrokerLost:
            # Their answers went with the broker: awaited still, they would never come.
            self._table.forget(request_ids)
            for rid in request_ids:
                self._waiters.pop(rid, None)
            raise
        if not answered:
            raise no_answer(self.address, timeout)
        done = {waiter for waiter in waiters if waiter.done()}
        # Another coroutine woken by the same answer may have taken it already.
        return {
            rid: waiter.result()
            for rid, waiter in zip(request_ids, waiters, strict=True)
            if waiter in done and self._waiters.pop(rid, None) is not None
        }

    async def close(self) -> None:
        if self._pulse is not None:
            self._pulse.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        for waiter in self._waiters.values():
            waiter.cancel()
        self._socket.close(linger=0)
