"""The zmq transports: one DEALER socket to the broker's frontend, blocking or asyncio.

With CURVE keys the DEALER is a CURVE client: a broker that refuses its key, or holds another
key than the one it expects, never answers, and the client's first PING times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

import zmq
import zmq.asyncio

from openenv_zmq.client.requests import RequestTable
from openenv_zmq.client.transport import DEFAULT_TIMEOUT, late_answers, no_answer
from openenv_zmq.curve import CurveKeys
from openenv_zmq.errors import TransportError
from openenv_zmq.protocol import DEFAULT_LIMITS, Limits, Message
from openenv_zmq.sockets import configure, curve_client


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
        self._table = RequestTable(limits)
        self._socket: zmq.Socket[bytes] = configure(
            zmq.Context.instance().socket(zmq.DEALER), limits=limits
        )
        if curve is not None:
            curve_client(self._socket, curve)
        self._socket.connect(address)

    def send(self, messages: Sequence[Message]) -> list[int]:
        """Encode every message, then send each; raises :class:`ProtocolError` before sending
        anything when one cannot be encoded."""
        stamped = self._table.stamp_all(messages)
        for _, frames in stamped:
            try:
                self._socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._table.forget([rid for rid, _ in stamped])
                raise TransportError(f"send queue to {self.address} is full") from None
        return [request_id for request_id, _ in stamped]

    def _wait(self, request_ids: Sequence[int], needed: int, timeout: float) -> bool:
        """Receive until ``needed`` of ``request_ids`` have answers; ``False`` on timeout."""
        arrived = self._table.arrived
        deadline = time.monotonic() + timeout
        while sum(rid in arrived for rid in request_ids) < needed:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._socket.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                return False
            while self._socket.poll(0, zmq.POLLIN):
                self._table.receive(self._socket.recv_multipart(copy=False))
        return True

    def exchange(self, messages: list[Message], timeout: float | None = None) -> list[Message]:
        timeout = self.timeout if timeout is None else timeout
        request_ids = self.send(messages)
        if not self._wait(request_ids, len(request_ids), timeout):
            missing = self._table.give_up(request_ids)
            self._table.take(request_ids)
            raise late_answers(len(missing), len(request_ids), self.address, timeout)
        answers = self._table.take(request_ids)
        return [answers[rid] for rid in request_ids]

    def wait_any(
        self, request_ids: Sequence[int], timeout: float | None = None
    ) -> dict[int, Message]:
        timeout = self.timeout if timeout is None else timeout
        if not self._wait(request_ids, 1, timeout):
            raise no_answer(self.address, timeout)
        return self._table.take(request_ids)

    def close(self) -> None:
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
        self._table = RequestTable(limits)
        self._waiters: dict[int, asyncio.Future[Message]] = {}
        """One per sent request, removed when its caller collects or gives up on the answer."""
        context = zmq.asyncio.Context(zmq.Context.instance())
        self._socket: zmq.asyncio.Socket = configure(context.socket(zmq.DEALER), limits=limits)
        if curve is not None:
            curve_client(self._socket, curve)
        self._socket.connect(address)
        self._reader: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        while True:
            answer = self._table.read(await self._socket.recv_multipart(copy=False))
            if answer is not None:
                waiter = self._waiters.get(answer.request_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(answer)

    async def send(self, messages: Sequence[Message]) -> list[int]:
        """Encode every message, then send each; raises :class:`ProtocolError` before sending
        anything when one cannot be encoded."""
        loop = asyncio.get_running_loop()
        if self._reader is None:
            self._reader = loop.create_task(self._read())
        stamped = self._table.stamp_all(messages)
        for request_id, _ in stamped:
            self._waiters[request_id] = loop.create_future()
        for _, frames in stamped:
            await self._socket.send_multipart(frames, copy=False)
        return [request_id for request_id, _ in stamped]

    async def exchange(
        self, messages: list[Message], timeout: float | None = None
    ) -> list[Message]:
        timeout = self.timeout if timeout is None else timeout
        request_ids = await self.send(messages)
        waiters = [self._waiters[rid] for rid in request_ids]
        try:
            async with asyncio.timeout(timeout):
                return [await waiter for waiter in waiters]
        except TimeoutError:
            # The timeout cancels the waiter it interrupts: cancelled ones got no answer either.
            missing = [
                rid
                for rid, waiter in zip(request_ids, waiters, strict=True)
                if not waiter.done() or waiter.cancelled()
            ]
            self._table.forget(missing)
            raise late_answers(len(missing), len(request_ids), self.address, timeout) from None
        finally:
            for rid in request_ids:
                self._waiters.pop(rid, None)

    async def wait_any(
        self, request_ids: Sequence[int], timeout: float | None = None
    ) -> dict[int, Message]:
        timeout = self.timeout if timeout is None else timeout
        waiters = [self._waiters[rid] for rid in request_ids]
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            raise no_answer(self.address, timeout)
        # Another coroutine woken by the same answer may have taken it already.
        return {
            rid: waiter.result()
            for rid, waiter in zip(request_ids, waiters, strict=True)
            if waiter in done and self._waiters.pop(rid, None) is not None
        }

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for waiter in self._waiters.values():
            waiter.cancel()
        self._socket.close(linger=0)
