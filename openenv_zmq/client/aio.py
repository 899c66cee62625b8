"""``AsyncBatchClient``: the asyncio client, same API as ``BatchClient`` with ``await``.

One client may be shared by many coroutines at once (the gateway does): a single reader task
hands each answer to the coroutine that awaits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import zmq
import zmq.asyncio

from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.client.batching import SubBatch
from openenv_zmq.client.flows import (
    Actions,
    Flow,
    GroupState,
    ResetKwargs,
    Seeds,
    alloc_flow,
    close_flow,
    completed_steps,
    reset_flow,
    state_flow,
    step_flow,
    step_requests,
)
from openenv_zmq.client.requests import RequestTable
from openenv_zmq.client.results import BatchResult
from openenv_zmq.client.transport import (
    CLOSE_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    WORKER_POLL_SECONDS,
    live_workers,
    no_default_group,
    too_few_workers,
    unreachable,
)
from openenv_zmq.client.view import GroupView
from openenv_zmq.errors import (
    ClientError,
    ClosedError,
    NoPendingCall,
    RequestTimeout,
    TransportError,
)
from openenv_zmq.protocol import DEFAULT_LIMITS, Limits, Message, Op
from openenv_zmq.sockets import configure

T = TypeVar("T")
EnvIdsArg = Sequence[int] | np.ndarray | None


class _AsyncConnection:
    """One DEALER socket, a reader task, and a future per awaited answer."""

    def __init__(self, address: str, timeout: float, limits: Limits) -> None:
        self.address = address
        self.timeout = timeout
        self.table = RequestTable(limits)
        self.waiters: dict[int, asyncio.Future[Message]] = {}
        context = zmq.asyncio.Context(zmq.Context.instance())
        self.socket: zmq.asyncio.Socket = configure(context.socket(zmq.DEALER))
        self.socket.connect(address)
        self._reader: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        while True:
            answer = self.table.read(await self.socket.recv_multipart(copy=False))
            if answer is not None:
                waiter = self.waiters.pop(answer.request_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(answer)

    async def send(self, message: Message) -> tuple[int, asyncio.Future[Message]]:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())
        request_id, frames = self.table.stamp(message)
        waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.waiters[request_id] = waiter
        await self.socket.send_multipart(frames, copy=False)
        return request_id, waiter

    def _abandon(self, sent: Sequence[tuple[int, asyncio.Future[Message]]]) -> int:
        # The timeout cancels the waiter it interrupts: cancelled ones got no answer either.
        missing = [
            request_id for request_id, waiter in sent if not waiter.done() or waiter.cancelled()
        ]
        self.table.forget(missing)
        for request_id in missing:
            self.waiters.pop(request_id, None)
        return len(missing)

    async def exchange(
        self, messages: list[Message], timeout: float | None = None
    ) -> list[Message]:
        timeout = self.timeout if timeout is None else timeout
        sent = [await self.send(m) for m in messages]
        try:
            async with asyncio.timeout(timeout):
                return [await waiter for _, waiter in sent]
        except TimeoutError:
            missing = self._abandon(sent)
            raise RequestTimeout(
                f"{missing} of {len(sent)} request(s) to {self.address}"
                f" got no answer within {timeout:g} s"
            ) from None

    async def drive(self, flow: Flow[T], timeout: float | None = None) -> T:
        try:
            requests = next(flow)
            while True:
                requests = flow.send(await self.exchange(requests, timeout))
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for waiter in self.waiters.values():
            waiter.cancel()
        self.socket.close(linger=0)


class AsyncEnvGroup(GroupView):
    """``EnvGroup`` with ``await``; see ``openenv_zmq.client.sync.EnvGroup`` for the contract."""

    def __init__(self, connection: _AsyncConnection, state: GroupState) -> None:
        super().__init__(state)
        self._connection = connection
        self._pending: dict[asyncio.Future[Message], SubBatch] = {}

    async def reset(
        self, seed: Seeds = None, env_ids: EnvIdsArg = None, kwargs: ResetKwargs = None
    ) -> BatchResult:
        state = self._state
        return await self._connection.drive(reset_flow(state, state.resolve(env_ids), seed, kwargs))

    async def step(self, actions: Actions, env_ids: EnvIdsArg = None) -> BatchResult:
        state = self._state
        return await self._connection.drive(step_flow(state, actions, state.resolve(env_ids)))

    async def send(self, actions: Actions, env_ids: EnvIdsArg = None) -> None:
        state = self._state
        ids = state.resolve(env_ids)
        subs, requests = step_requests(state, actions, ids)
        for sub, request in zip(subs, requests, strict=True):
            _, waiter = await self._connection.send(request)
            self._pending[waiter] = sub
        state.in_flight.update(ids.tolist())

    async def recv(self, timeout: float | None = None) -> BatchResult:
        if not self._pending:
            raise NoPendingCall("recv() without a send() in flight")
        timeout = self._connection.timeout if timeout is None else timeout
        done, _ = await asyncio.wait(
            list(self._pending), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            raise RequestTimeout(f"no answer from {self._connection.address} within {timeout:g} s")
        finished = [(self._pending.pop(w), w.result()) for w in list(self._pending) if w in done]
        return completed_steps(self._state, finished)

    async def state(self, env_ids: EnvIdsArg = None) -> list[Any]:
        state = self._state
        return await self._connection.drive(state_flow(state, state.resolve(env_ids)))

    async def close(self) -> None:
        await self._connection.drive(close_flow(self._state), CLOSE_TIMEOUT)

    async def __aenter__(self) -> AsyncEnvGroup:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncBatchClient:
    """``BatchClient`` with ``await``. Connect with ``async with`` or ``await client.connect()``.

    ``AsyncBatchClient(address, env="echo", num_envs=8)`` makes that group on connect.
    """

    def __init__(
        self,
        address: str,
        env: str | None = None,
        num_envs: int = 1,
        *,
        autoreset: AutoresetMode | str = AutoresetMode.DISABLED,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        limits: Limits = DEFAULT_LIMITS,
        **env_kwargs: Any,
    ) -> None:
        self.address = address
        self._connection = _AsyncConnection(address, timeout, limits)
        self._connect_timeout = connect_timeout
        self._default_spec = (env, num_envs, AutoresetMode(autoreset), env_kwargs)
        self._groups: list[AsyncEnvGroup] = []
        self._default: AsyncEnvGroup | None = None
        self._connected = False
        self._closed = False

    async def connect(self) -> AsyncBatchClient:
        """Check the broker answers (else :class:`BrokerUnreachable`); make the default group."""
        self._check_open()
        if self._connected:
            return self
        try:
            await self._connection.exchange([Message(Op.PING)], self._connect_timeout)
        except RequestTimeout:
            raise unreachable(self.address, self._connect_timeout) from None
        self._connected = True
        env, num_envs, autoreset, kwargs = self._default_spec
        if env is not None:
            self._default = await self.make(env, num_envs, autoreset=autoreset, **kwargs)
        return self

    async def make(
        self,
        env: str,
        num_envs: int = 1,
        *,
        autoreset: AutoresetMode | str = AutoresetMode.DISABLED,
        **kwargs: Any,
    ) -> AsyncEnvGroup:
        """See ``BatchClient.make``."""
        self._check_open()
        if num_envs < 1:
            raise ClientError(f"num_envs must be at least 1, got {num_envs}")
        state = await self._connection.drive(
            alloc_flow(env, num_envs, kwargs, AutoresetMode(autoreset))
        )
        group = AsyncEnvGroup(self._connection, state)
        self._groups.append(group)
        return group

    async def status(self) -> dict[str, Any]:
        self._check_open()
        [answer] = await self._connection.exchange([Message(Op.STATUS)])
        status: dict[str, Any] = answer.meta["status"]
        return status

    async def workers(self, env: str | None = None) -> list[dict[str, Any]]:
        """See ``BatchClient.workers``."""
        return live_workers(await self.status(), env)

    async def wait_for_workers(
        self, count: int = 1, env: str | None = None, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """See ``BatchClient.wait_for_workers``."""
        deadline = time.monotonic() + timeout
        while True:
            live = await self.workers(env)
            if len(live) >= count:
                return live
            if time.monotonic() > deadline:
                raise too_few_workers(len(live), count, env, timeout)
            await asyncio.sleep(WORKER_POLL_SECONDS)

    @property
    def envs(self) -> AsyncEnvGroup:
        if self._default is None:
            raise no_default_group()
        return self._default

    async def reset(
        self, seed: Seeds = None, env_ids: EnvIdsArg = None, kwargs: ResetKwargs = None
    ) -> BatchResult:
        return await self.envs.reset(seed, env_ids, kwargs)

    async def step(self, actions: Actions, env_ids: EnvIdsArg = None) -> BatchResult:
        return await self.envs.step(actions, env_ids)

    async def send(self, actions: Actions, env_ids: EnvIdsArg = None) -> None:
        await self.envs.send(actions, env_ids)

    async def recv(self, timeout: float | None = None) -> BatchResult:
        return await self.envs.recv(timeout)

    async def state(self, env_ids: EnvIdsArg = None) -> list[Any]:
        return await self.envs.state(env_ids)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the client is closed")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for group in self._groups:
                if not group.closed:
                    await group.close()
        except TransportError:
            pass  # the broker is gone: its slots went with it
        finally:
            await self._connection.close()

    async def __aenter__(self) -> AsyncBatchClient:
        try:
            return await self.connect()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
