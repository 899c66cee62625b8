"""``AsyncBatchClient``: the asyncio client, same API as ``BatchClient`` with ``await``.

One client may be shared by many coroutines at once (the gateway does): the transport hands
each answer to the coroutine that awaits it. ``tests/unit/test_client_parity.py`` keeps this
module's API the same as :mod:`~openenv_zmq.client.sync`'s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.client.flows import (
    Actions,
    Flow,
    ResetKwargs,
    Seeds,
    close_flow,
    completed_steps,
    make_flow,
    reset_flow,
    state_flow,
    step_flow,
    step_requests,
)
from openenv_zmq.client.results import BatchResult
from openenv_zmq.client.state import (
    WORKER_POLL_SECONDS,
    ClientState,
    GroupState,
    group_spec,
    live_workers,
    too_few_workers,
    unreachable,
)
from openenv_zmq.client.transport import (
    CLOSE_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    AsyncTransport,
)
from openenv_zmq.client.view import GroupView
from openenv_zmq.client.zmq_transport import AsyncZmqTransport
from openenv_zmq.curve import CurveDir, client_keys
from openenv_zmq.errors import BrokerLost, ClientError, RequestTimeout, TransportError
from openenv_zmq.protocol import DEFAULT_LIMITS, Limits, Message, Op

T = TypeVar("T")
EnvIdsArg = Sequence[int] | np.ndarray | None


async def drive(transport: AsyncTransport, flow: Flow[T], timeout: float | None = None) -> T:
    """Run a flow to its end, sending each round of requests and feeding back the answers."""
    try:
        requests = next(flow)
        while True:
            requests = flow.send(await transport.exchange(requests, timeout))
    except StopIteration as stop:
        result: T = stop.value
        return result


class AsyncEnvGroup(GroupView):
    """``EnvGroup`` with ``await``; see ``openenv_zmq.client.sync.EnvGroup`` for the contract."""

    def __init__(self, transport: AsyncTransport, state: GroupState) -> None:
        super().__init__(state)
        self._transport = transport

    async def reset(
        self, seed: Seeds = None, env_ids: EnvIdsArg = None, kwargs: ResetKwargs = None
    ) -> BatchResult:
        """As :meth:`EnvGroup.reset`, awaited."""
        state = self._state
        return await drive(self._transport, reset_flow(state, state.resolve(env_ids), seed, kwargs))

    async def step(
        self, actions: Actions, env_ids: EnvIdsArg = None, *, timeout_s: float | None = None
    ) -> BatchResult:
        """As :meth:`EnvGroup.step`, awaited."""
        state = self._state
        return await drive(
            self._transport, step_flow(state, actions, state.resolve(env_ids), timeout_s)
        )

    async def send(
        self, actions: Actions, env_ids: EnvIdsArg = None, *, timeout_s: float | None = None
    ) -> None:
        """As :meth:`EnvGroup.send`, awaited."""
        state = self._state
        subs, requests = step_requests(state, actions, state.resolve(env_ids), timeout_s)
        # All at once: a sub-batch over the limits must not leave the others sent and unseen.
        for request_id, sub in zip(await self._transport.send(requests), subs, strict=True):
            state.sent(request_id, sub)

    async def recv(self, timeout: float | None = None) -> BatchResult:
        """As :meth:`EnvGroup.recv`, awaited."""
        state = self._state
        try:
            answers = await self._transport.wait_any(state.awaited(), timeout)
        except BrokerLost:
            state.forget_in_flight()
            raise
        return completed_steps(state, answers)

    async def state(self, env_ids: EnvIdsArg = None) -> list[Any]:
        """As :meth:`EnvGroup.state`, awaited."""
        state = self._state
        return await drive(self._transport, state_flow(state, state.resolve(env_ids)))

    async def close(self) -> None:
        """As :meth:`EnvGroup.close`, awaited."""
        await drive(self._transport, close_flow(self._state), CLOSE_TIMEOUT)

    async def __aenter__(self) -> AsyncEnvGroup:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncBatchClient:
    """``BatchClient`` with ``await``. Connect with ``async with`` or ``await client.connect()``.

    ``AsyncBatchClient(address, env="echo", num_envs=8)`` makes that group on connect;
    ``address``, ``transport=`` and ``curve_dir=`` are as in ``BatchClient``.
    """

    def __init__(
        self,
        address: str | None = None,
        env: str | None = None,
        num_envs: int = 1,
        *,
        autoreset: AutoresetMode | str = AutoresetMode.DISABLED,
        as_dicts: bool = False,
        concurrency: int | None = None,
        timeout_s: float | None = None,
        env_kwargs: dict[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        limits: Limits = DEFAULT_LIMITS,
        transport: AsyncTransport | None = None,
        curve_dir: CurveDir | None = None,
        **kwargs: Any,
    ) -> None:
        if (address is None) == (transport is None):
            raise ClientError("pass either a broker address or a transport")
        if transport is not None and curve_dir is not None:
            raise ClientError("curve_dir= is for the client's own zmq transport, not transport=")
        self._transport = transport or AsyncZmqTransport(
            str(address), timeout, limits, client_keys(curve_dir)
        )
        spec = None
        if env is not None:
            options = dict(
                autoreset=autoreset, as_dicts=as_dicts, concurrency=concurrency, timeout_s=timeout_s
            )
            spec = group_spec(env, num_envs, options, env_kwargs, kwargs)
        self._state = ClientState(spec, connect_timeout, curve=curve_dir is not None)

    @property
    def address(self) -> str:
        """The broker address this client connects to."""
        return self._transport.address

    async def connect(self) -> AsyncBatchClient:
        """Check the broker answers (else :class:`BrokerUnreachable`); make the default group."""
        state = self._state
        state.check_open()
        if state.connected:
            return self
        try:
            await self._transport.exchange([Message(Op.PING)], state.connect_timeout)
        except RequestTimeout:
            raise unreachable(self.address, state.connect_timeout, self._state.curve) from None
        state.connected = True
        if state.default_spec is not None:
            state.default = await drive(self._transport, make_flow(state, state.default_spec))
        return self

    async def make(
        self,
        env: str,
        num_envs: int = 1,
        *,
        autoreset: AutoresetMode | str = AutoresetMode.DISABLED,
        as_dicts: bool = False,
        concurrency: int | None = None,
        timeout_s: float | None = None,
        env_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> AsyncEnvGroup:
        """See ``BatchClient.make``."""
        options = dict(
            autoreset=autoreset, as_dicts=as_dicts, concurrency=concurrency, timeout_s=timeout_s
        )
        spec = group_spec(env, num_envs, options, env_kwargs, kwargs)
        group = await drive(self._transport, make_flow(self._state, spec))
        return AsyncEnvGroup(self._transport, group)

    async def status(self) -> dict[str, Any]:
        """As :meth:`BatchClient.status`, awaited."""
        self._state.check_open()
        [answer] = await self._transport.exchange([Message(Op.STATUS)])
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
        """The default group (made by ``env=``); raises :class:`ClientError` without one."""
        return AsyncEnvGroup(self._transport, self._state.default_group())

    async def reset(
        self, seed: Seeds = None, env_ids: EnvIdsArg = None, kwargs: ResetKwargs = None
    ) -> BatchResult:
        """``reset`` of the default group (see :meth:`EnvGroup.reset`)."""
        return await self.envs.reset(seed, env_ids, kwargs)

    async def step(
        self, actions: Actions, env_ids: EnvIdsArg = None, *, timeout_s: float | None = None
    ) -> BatchResult:
        """``step`` of the default group (see :meth:`EnvGroup.step`)."""
        return await self.envs.step(actions, env_ids, timeout_s=timeout_s)

    async def send(
        self, actions: Actions, env_ids: EnvIdsArg = None, *, timeout_s: float | None = None
    ) -> None:
        """``send`` of the default group (see :meth:`EnvGroup.send`)."""
        await self.envs.send(actions, env_ids, timeout_s=timeout_s)

    async def recv(self, timeout: float | None = None) -> BatchResult:
        """``recv`` of the default group (see :meth:`EnvGroup.recv`)."""
        return await self.envs.recv(timeout)

    async def state(self, env_ids: EnvIdsArg = None) -> list[Any]:
        """``state`` of the default group (see :meth:`EnvGroup.state`)."""
        return await self.envs.state(env_ids)

    async def close(self) -> None:
        """Close every group this client made, then its connection; a second call does nothing."""
        if self._state.closed:
            return
        self._state.closed = True
        try:
            for group in self._state.open_groups():
                await drive(self._transport, close_flow(group), CLOSE_TIMEOUT)
        except TransportError:
            pass  # the broker is gone: its slots went with it
        finally:
            await self._transport.close()

    async def __aenter__(self) -> AsyncBatchClient:
        try:
            return await self.connect()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
