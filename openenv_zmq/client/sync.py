"""``BatchClient``: the blocking client a trainer steps envs with."""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import zmq

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


class _Connection:
    """One DEALER socket to the broker and the answers that arrived on it."""

    def __init__(self, address: str, timeout: float, limits: Limits) -> None:
        self.address = address
        self.timeout = timeout
        self.table = RequestTable(limits)
        self.arrived: dict[int, Message] = {}
        self.socket: zmq.Socket[bytes] = configure(zmq.Context.instance().socket(zmq.DEALER))
        self.socket.connect(address)

    def send(self, message: Message) -> int:
        request_id, frames = self.table.stamp(message)
        try:
            self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.table.forget([request_id])
            raise TransportError(f"send queue to {self.address} is full") from None
        return request_id

    def wait(
        self, request_ids: Sequence[int], timeout: float | None, *, any_: bool = False
    ) -> None:
        """Receive until all (or, with ``any_``, one) of ``request_ids`` have answers."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        needed = 1 if any_ else len(request_ids)
        while sum(rid in self.arrived for rid in request_ids) < needed:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.socket.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                if any_:
                    raise RequestTimeout(f"no answer from {self.address} within {timeout:g} s")
                missing = [rid for rid in request_ids if rid not in self.arrived]
                self.table.forget(missing)
                raise RequestTimeout(
                    f"{len(missing)} of {len(request_ids)} request(s) to {self.address}"
                    f" got no answer within {timeout:g} s"
                )
            while self.socket.poll(0, zmq.POLLIN):
                answer = self.table.read(self.socket.recv_multipart(copy=False))
                if answer is not None:
                    self.arrived[answer.request_id] = answer

    def exchange(self, messages: list[Message], timeout: float | None = None) -> list[Message]:
        request_ids = [self.send(m) for m in messages]
        self.wait(request_ids, timeout)
        return [self.arrived.pop(rid) for rid in request_ids]

    def drive(self, flow: Flow[T], timeout: float | None = None) -> T:
        """Run a flow to its end, sending each round of requests and feeding back the answers."""
        try:
            requests = next(flow)
            while True:
                requests = flow.send(self.exchange(requests, timeout))
        except StopIteration as stop:
            result: T = stop.value
            return result

    def close(self) -> None:
        self.socket.close(linger=0)


class EnvGroup(GroupView):
    """Env instances made together by ``BatchClient.make``; every call takes a batch.

    Calls are answered in the order of the env ids they name (all the group's by default).
    ``send()`` / ``recv()`` are EnvPool's asynchronous pair: after ``send()``, call ``recv()``
    until every sent env id has come back; ``recv()`` returns whichever sub-batches finished.
    """

    def __init__(self, connection: _Connection, state: GroupState) -> None:
        super().__init__(state)
        self._connection = connection
        self._pending: dict[int, SubBatch] = {}

    def reset(
        self, seed: Seeds = None, env_ids: EnvIdsArg = None, kwargs: ResetKwargs = None
    ) -> BatchResult:
        """Reset envs. ``seed``: one int (env i of the call gets ``seed + i``) or one per env;
        ``kwargs``: reset keyword arguments, one dict for all or a list with one per env.
        Env ids whose worker died are placed on a live worker first.

        Raises :class:`BatchSizeMismatch`, :class:`EnvIdsNotInGroup`, :class:`ClosedError`,
        :class:`RequestTimeout`.
        """
        state = self._state
        return self._connection.drive(reset_flow(state, state.resolve(env_ids), seed, kwargs))

    def step(self, actions: Actions, env_ids: EnvIdsArg = None) -> BatchResult:
        """Step ``env_ids`` (all by default) with one action each, in the same order.

        Raises :class:`BatchSizeMismatch`, :class:`EnvIdsNotInGroup`, :class:`ClosedError`,
        :class:`AlreadyPendingCall`, :class:`RequestTimeout`; env failures land in ``errors``.
        """
        state = self._state
        return self._connection.drive(step_flow(state, actions, state.resolve(env_ids)))

    def send(self, actions: Actions, env_ids: EnvIdsArg = None) -> None:
        """Start stepping ``env_ids`` and return at once; collect the answers with ``recv()``."""
        state = self._state
        ids = state.resolve(env_ids)
        subs, requests = step_requests(state, actions, ids)
        for sub, request in zip(subs, requests, strict=True):
            self._pending[self._connection.send(request)] = sub
        state.in_flight.update(ids.tolist())

    def recv(self, timeout: float | None = None) -> BatchResult:
        """The sub-batches of earlier ``send()`` calls that have finished (at least one).

        Raises :class:`NoPendingCall` when nothing was sent, :class:`RequestTimeout` when
        nothing finished within ``timeout`` seconds (the calls stay pending).
        """
        if not self._pending:
            raise NoPendingCall("recv() without a send() in flight")
        connection = self._connection
        connection.wait(list(self._pending), timeout, any_=True)
        done = [rid for rid in self._pending if rid in connection.arrived]
        finished = [(self._pending.pop(rid), connection.arrived.pop(rid)) for rid in done]
        return completed_steps(self._state, finished)

    def state(self, env_ids: EnvIdsArg = None) -> list[Any]:
        """Each env's State model, in env id order. Raises the first env's error if any failed."""
        state = self._state
        return self._connection.drive(state_flow(state, state.resolve(env_ids)))

    def close(self) -> None:
        """Close every env of the group and free its slots. Closing twice does nothing."""
        self._connection.drive(close_flow(self._state), CLOSE_TIMEOUT)

    def __enter__(self) -> EnvGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BatchClient:
    """Connects to a broker and makes env groups.

    ``BatchClient(address)`` then ``make(env, num_envs)``; or ``BatchClient(address, env=...,
    num_envs=...)`` to make one group at once and call ``reset`` / ``step`` / ``state`` /
    ``send`` / ``recv`` on the client directly. Raises :class:`BrokerUnreachable` when no broker
    answers within ``connect_timeout`` seconds.
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
        self._connection = _Connection(address, timeout, limits)
        self._groups: list[EnvGroup] = []
        self._default: EnvGroup | None = None
        self._closed = False
        try:
            self._connection.exchange([Message(Op.PING)], connect_timeout)
            if env is not None:
                self._default = self.make(env, num_envs, autoreset=autoreset, **env_kwargs)
        except RequestTimeout:
            self._connection.close()
            raise unreachable(address, connect_timeout) from None
        except BaseException:
            self.close()
            raise

    def make(
        self,
        env: str,
        num_envs: int = 1,
        *,
        autoreset: AutoresetMode | str = AutoresetMode.DISABLED,
        **kwargs: Any,
    ) -> EnvGroup:
        """Place ``num_envs`` instances of ``env`` on workers and create them.

        ``kwargs`` go to every instance's constructor. Raises :class:`NoWorkerAvailable` when
        the live workers hosting ``env`` lack the slots, or the first env's constructor error.
        """
        self._check_open()
        if num_envs < 1:
            raise ClientError(f"num_envs must be at least 1, got {num_envs}")
        state = self._connection.drive(alloc_flow(env, num_envs, kwargs, AutoresetMode(autoreset)))
        group = EnvGroup(self._connection, state)
        self._groups.append(group)
        return group

    def status(self) -> dict[str, Any]:
        """The broker's view: workers, their liveness, env slots used/free, steps served."""
        self._check_open()
        [answer] = self._connection.exchange([Message(Op.STATUS)])
        status: dict[str, Any] = answer.meta["status"]
        return status

    def workers(self, env: str | None = None) -> list[dict[str, Any]]:
        """The broker's live workers (those hosting ``env`` when given), as in ``status()``."""
        return live_workers(self.status(), env)

    def wait_for_workers(
        self, count: int = 1, env: str | None = None, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """Block until ``count`` live workers (hosting ``env``) have joined; returns them.

        Raises :class:`NoWorkerAvailable` naming how many joined when ``timeout`` runs out.
        """
        deadline = time.monotonic() + timeout
        while True:
            live = self.workers(env)
            if len(live) >= count:
                return live
            if time.monotonic() > deadline:
                raise too_few_workers(len(live), count, env, timeout)
            time.sleep(WORKER_POLL_SECONDS)

    @property
    def envs(self) -> EnvGroup:
        """The group made by the constructor's ``env=``."""
        if self._default is None:
            raise no_default_group()
        return self._default

    def reset(
        self, seed: Seeds = None, env_ids: EnvIdsArg = None, kwargs: ResetKwargs = None
    ) -> BatchResult:
        return self.envs.reset(seed, env_ids, kwargs)

    def step(self, actions: Actions, env_ids: EnvIdsArg = None) -> BatchResult:
        return self.envs.step(actions, env_ids)

    def send(self, actions: Actions, env_ids: EnvIdsArg = None) -> None:
        self.envs.send(actions, env_ids)

    def recv(self, timeout: float | None = None) -> BatchResult:
        return self.envs.recv(timeout)

    def state(self, env_ids: EnvIdsArg = None) -> list[Any]:
        return self.envs.state(env_ids)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the client is closed")

    def close(self) -> None:
        """Close every group made here (best effort), then the socket."""
        if self._closed:
            return
        self._closed = True
        try:
            for group in self._groups:
                if not group.closed:
                    group.close()
        except TransportError:
            pass  # the broker is gone: its slots went with it
        finally:
            self._connection.close()

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
