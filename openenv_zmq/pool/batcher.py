"""Per-slot requests coalesced into few batched calls, without ever holding one back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from openenv_zmq.client.results import BatchResult
from openenv_zmq.errors import ClosedError, ProtocolError

P = TypeVar("P")
CLOSED = "the session pool is closed"


class Answer(Protocol):
    """Where a request's outcome goes: an ``asyncio.Future``, or anything that settles like one
    (a blocked thread's waiter)."""

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


def settle(answer: Answer, task: asyncio.Future[Any]) -> None:
    """Give ``answer`` the outcome of ``task`` when it ends (a cancelled task: ClosedError, as
    only a closing pool cancels the tasks it started)."""

    def done(task: asyncio.Future[Any]) -> None:
        if answer.done():
            return
        if task.cancelled():
            answer.set_exception(ClosedError(CLOSED))
        elif (error := task.exception()) is not None:
            answer.set_exception(error)
        else:
            answer.set_result(task.result())

    task.add_done_callback(done)


@dataclass
class _Pending(Generic[P]):
    slot: int
    payload: P
    answer: Answer


class Batcher(Generic[P]):
    """Sends per-slot requests as few calls as possible, without ever holding one back.

    An idle batcher sends a request on the next turn of the event loop (with whatever else
    arrived in that turn); while a call is in flight, new requests gather and go out together
    as soon as it returns. No fixed waiting window: a lone session pays no batching delay.
    ``send(slots, payloads)`` makes the batched call; every request names a distinct slot.
    """

    def __init__(self, send: Callable[[list[int], list[P]], Awaitable[BatchResult]]) -> None:
        self._send = send
        self._queue: list[_Pending[P]] = []
        self._sending: list[_Pending[P]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    async def submit(self, slot: int, payload: P) -> Any:
        """The slot's observation; raises the slot's ``EnvError``, the whole call's error, or
        :class:`ClosedError` once the batcher is closed."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.post(slot, payload, answer)
        return await answer

    def post(self, slot: int, payload: P, answer: Answer) -> None:
        """:meth:`submit` without waiting, from the batcher's event loop: the outcome goes to
        ``answer``."""
        if self._closed:
            answer.set_exception(ClosedError(CLOSED))
            return
        self._queue.append(_Pending(slot, payload, answer))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._queue:
                self._sending, self._queue = self._queue, []
                await self._send_batch(self._sending)
        finally:
            self._flusher = None

    async def _send_batch(self, batch: list[_Pending[P]]) -> None:
        try:
            result = await self._send([p.slot for p in batch], [p.payload for p in batch])
        except Exception as exc:
            if isinstance(exc, ProtocolError) and len(batch) > 1:
                # A request refused whole (too large for the broker, or a value the wire cannot
                # carry) fails its own session alone, not the sessions batched with it.
                for pending in batch:
                    await self._send_batch([pending])
                return
            for pending in batch:
                if not pending.answer.done():
                    pending.answer.set_exception(exc)
            return
        for i, pending in enumerate(batch):
            if pending.answer.done():  # the session went away while the batch was in flight
                continue
            error = result.errors.get(pending.slot)
            if error is not None:
                pending.answer.set_exception(error)
            else:
                pending.answer.set_result(result.observations[i])

    async def close(self) -> None:
        """Stop sending: requests still queued or in flight raise :class:`ClosedError`."""
        self._closed = True
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        for pending in self._sending + self._queue:
            if not pending.answer.done():
                pending.answer.set_exception(ClosedError(CLOSED))
        self._sending, self._queue = [], []
