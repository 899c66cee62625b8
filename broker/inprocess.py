"""The broker and its workers in one process with no sockets: a transport for tests.

:class:`InProcessBroker` pumps the real :class:`~broker.core.BrokerCore` and real
:class:`~openenv_zmq.worker.WorkerCore` s exactly as the zmq loops do, frames included: workers
register through ``READY -> WELCOME`` and heartbeat, requests are forwarded by the routing core
and stepped by the worker cores. :meth:`InProcessBroker.connect` and
:meth:`InProcessBroker.connect_async` return client transports, so::

    broker = InProcessBroker(["echo"], workers=2)
    with BatchClient(transport=broker.connect(), env="echo", num_envs=8) as client:
        client.reset()

Every request is answered before ``send`` returns, so nothing times out here (a request whose
worker is gone is answered ``WorkerLost`` by the routing core).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from broker.core import BrokerConfig, BrokerCore, Output, ToClient, ToWorker
from openenv_zmq.client.batching import raise_if_error
from openenv_zmq.client.requests import RequestTable, needs_session
from openenv_zmq.client.transport import DEFAULT_TIMEOUT, late_answers, no_answer
from openenv_zmq.errors import ClosedError
from openenv_zmq.protocol import (
    CONTROL_ROUTE,
    DEFAULT_LIMITS,
    Frame,
    Limits,
    Message,
    Op,
    decode,
    encode,
)
from openenv_zmq.worker import BrokerLink, LinkOutput, WorkerCore, WorkerLifecycle
from openenv_zmq.worker.core import Pending
from openenv_zmq.worker.link import NOT_SERVING
from openenv_zmq.worker.runner import CallRunner

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def standing_still() -> float:
    """The default clock: time does not pass, so no heartbeat falls due and no worker dies of
    silence while a test thinks."""
    return 0.0


@dataclass(eq=False)
class _Worker:
    identity: bytes
    core: WorkerCore
    link: BrokerLink


class InProcessBroker:
    """A :class:`BrokerCore` and its workers' cores, pumped in this process.

    ``workers`` workers each host ``envs`` in ``capacity`` slots and register at once. Call
    order: build it, :meth:`connect` clients, :meth:`close` it after them. ``clock`` is the time
    of broker and workers (see :func:`standing_still`); pass one you move to test liveness.
    Raises :class:`EnvNotFound` for an env that does not resolve.
    """

    def __init__(
        self,
        envs: Sequence[str],
        workers: int = 1,
        capacity: int = 4096,
        config: BrokerConfig | None = None,
        clock: Clock = standing_still,
    ) -> None:
        self.core = BrokerCore(config)
        self._clock = clock
        self._runner = CallRunner()
        self._workers: dict[bytes, _Worker] = {}
        self._clients: dict[bytes, RequestTable] = {}
        self._client_ids = itertools.count(1)
        self._worker_names = (f"inprocess-{i}" for i in itertools.count())
        for _ in range(workers):
            self.add_worker(envs, capacity)

    def add_worker(self, envs: Sequence[str], capacity: int = 4096) -> str:
        """Start a worker hosting ``envs``; it registers (READY -> WELCOME). Returns its name.

        Raises :class:`RuntimeError` if the broker does not welcome it.
        """
        name = next(self._worker_names)
        ready = Message(
            Op.READY,
            meta={"envs": list(envs), "capacity": capacity, "name": name, "pid": os.getpid()},
        )
        config = self.core.config
        link = BrokerLink(ready, config.heartbeat_interval, config.liveness, self._clock())
        worker = _Worker(name.encode(), WorkerCore(envs, capacity), link)
        self._workers[worker.identity] = worker
        self._tick()
        if link.state is not WorkerLifecycle.READY:
            raise RuntimeError(f"worker {name} did not register: {link.state.name}")
        return name

    def remove_worker(self, name: str) -> None:
        """Worker ``name``'s process ends: its envs are gone and the broker hears of it."""
        worker = self._workers.pop(name.encode())
        worker.core.drop_all()
        self._deliver(self.core.worker_exited(name.encode(), self._clock()))

    def connect(
        self, timeout: float = DEFAULT_TIMEOUT, limits: Limits = DEFAULT_LIMITS
    ) -> InProcessTransport:
        """A blocking client transport to this broker."""
        return InProcessTransport(self, timeout, limits)

    def connect_async(
        self, timeout: float = DEFAULT_TIMEOUT, limits: Limits = DEFAULT_LIMITS
    ) -> AsyncInProcessTransport:
        """An asyncio client transport to this broker."""
        return AsyncInProcessTransport(self.connect(timeout, limits))

    def attach(self, table: RequestTable) -> bytes:
        """A new client identity whose answers are fed to ``table``."""
        identity = f"client-{next(self._client_ids)}".encode()
        self._clients[identity] = table
        return identity

    def detach(self, identity: bytes) -> None:
        self._clients.pop(identity, None)

    def from_client(self, identity: bytes, frames: Sequence[Frame]) -> None:
        """Route a client's request and everything it sets off until all is quiet."""
        self._tick()
        self._deliver(self.core.on_client(identity, frames, self._clock()))

    def close(self) -> None:
        """Drop every env of every worker."""
        for worker in self._workers.values():
            worker.core.drop_all()
        self._workers.clear()
        self._runner.close()

    def __enter__(self) -> InProcessBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tick(self) -> None:
        """What is due: each worker's READY or heartbeat first, then the broker's liveness."""
        now = self._clock()
        for worker in list(self._workers.values()):
            if now >= worker.link.deadline:
                self._apply(worker, worker.link.on_tick(now))
        self._deliver(self.core.on_tick(now))

    def _apply(self, worker: _Worker, output: LinkOutput) -> None:
        if output.drop_all:
            worker.core.drop_all()
        for message in output.send:
            self._deliver(
                self.core.on_worker(
                    worker.identity, [CONTROL_ROUTE, *encode(message)], self._clock()
                )
            )

    def _deliver(self, outputs: list[Output]) -> None:
        queue: deque[Output] = deque(outputs)
        while queue:
            output = queue.popleft()
            if isinstance(output, ToClient):
                table = self._clients.get(output.client)
                if table is not None:
                    table.receive(_received(output.frames))
            elif isinstance(output, ToWorker):
                queue.extend(self._to_worker(output))
            else:
                log.info("in-process broker: %s", output)

    def _to_worker(self, output: ToWorker) -> list[Output]:
        worker = self._workers.get(output.identity)
        if worker is None:
            return self.core.undeliverable(output, self._clock(), gone=True)
        route, *body = output.frames
        now = self._clock()
        if bytes(route) == CONTROL_ROUTE:
            self._apply(worker, worker.link.on_control(decode(body), now))
            return []
        worker.link.heard(now)
        if not worker.link.serving:
            refused = worker.core.refuse(body, NOT_SERVING)
            return self.core.on_worker(worker.identity, [route, *refused], self._clock())
        answer = worker.core.handle(_received(body))
        if isinstance(answer, Pending):
            self._runner.run(answer)  # async and threaded envs still run concurrently, but
            answer = worker.core.finish(answer)  # the sender waits for them
        return self.core.on_worker(worker.identity, [route, *answer], self._clock())


def _received(frames: Sequence[Frame]) -> list[Frame]:
    """``frames`` as a socket delivers them: the receiver's own writable copy, as a zmq frame is
    (so arrays decoded from them are writable, and no peer shares memory with another)."""
    return [bytearray(frame) for frame in frames]


class InProcessTransport:
    """A :class:`~openenv_zmq.client.transport.Transport` to an :class:`InProcessBroker`."""

    address = "inprocess://broker"

    def __init__(self, broker: InProcessBroker, timeout: float, limits: Limits) -> None:
        self.timeout = timeout
        self._broker = broker
        self._table = RequestTable(limits)
        self._identity: bytes | None = broker.attach(self._table)

    @property
    def session(self) -> bytes | None:
        return self._table.session

    def send(self, messages: Sequence[Message]) -> list[int]:
        if self._identity is None:
            raise ClosedError("the transport is closed")
        if self._table.session is None and needs_session(messages):
            # Answered at once, as everything here is: the answer opens the session.
            request_id, frames = self._table.hello()
            self._broker.from_client(self._identity, frames)
            raise_if_error(self._table.take([request_id])[request_id])
        stamped = self._table.stamp_all(messages)
        for _, frames in stamped:
            self._broker.from_client(self._identity, frames)
        return [request_id for request_id, _ in stamped]

    def exchange(self, messages: list[Message], timeout: float | None = None) -> list[Message]:
        request_ids = self.send(messages)
        missing = self._table.give_up(request_ids)
        answers = self._table.take(request_ids)
        if missing:
            timeout = self.timeout if timeout is None else timeout
            raise late_answers(len(missing), len(request_ids), self.address, timeout)
        return [answers[rid] for rid in request_ids]

    def wait_any(
        self, request_ids: Sequence[int], timeout: float | None = None
    ) -> dict[int, Message]:
        answers = self._table.take(request_ids)
        if not answers:
            raise no_answer(self.address, self.timeout if timeout is None else timeout)
        return answers

    def close(self) -> None:
        if self._identity is not None:
            self._broker.detach(self._identity)
            self._identity = None


class AsyncInProcessTransport:
    """An :class:`~openenv_zmq.client.transport.AsyncTransport` to an :class:`InProcessBroker`.

    Each call yields to the event loop once, as a socket round trip would, so coroutines that
    share the transport interleave as they do over zmq.
    """

    def __init__(self, transport: InProcessTransport) -> None:
        self._sync = transport
        self.address = transport.address
        self.timeout = transport.timeout

    @property
    def session(self) -> bytes | None:
        return self._sync.session

    async def send(self, messages: Sequence[Message]) -> list[int]:
        request_ids = self._sync.send(messages)
        await asyncio.sleep(0)
        return request_ids

    async def exchange(
        self, messages: list[Message], timeout: float | None = None
    ) -> list[Message]:
        answers = self._sync.exchange(messages, timeout)
        await asyncio.sleep(0)
        return answers

    async def wait_any(
        self, request_ids: Sequence[int], timeout: float | None = None
    ) -> dict[int, Message]:
        await asyncio.sleep(0)
        return self._sync.wait_any(request_ids, timeout)

    async def close(self) -> None:
        self._sync.close()
