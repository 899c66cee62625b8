"""``BatchClient``: the blocking client a trainer steps envs with.

The facades only pump: every decision is in :mod:`~openenv_zmq.client.flows` and every fact in
:mod:`~openenv_zmq.client.state`; ``tests/unit/test_client_parity.py`` keeps this module and
:mod:`~openenv_zmq.client.aio` the same API.
"""

from __future__ import annotations

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
    Transport,
)
from openenv_zmq.client.view import GroupView
from openenv_zmq.client.zmq_transport import ZmqTransport
from openenv_zmq.curve import CurveDir, client_keys
from openenv_zmq.errors import BrokerLost, ClientError, RequestTimeout, TransportError
from openenv_zmq.protocol import DEFAULT_LIMITS, Limits, Message, Op

T = TypeVar("T")
EnvIdsArg = Sequence[int] | np.ndarray | None


def drive(transport: Transport, flow: Flow[T], timeout: float | None = None) -> T:
    """Run a flow to its end, sending each round of requests and feeding back the answers."""
    try:
        requests = next(flow)
        while True:
            requests = flow.send(transport.exchange(requests, timeout))
    except StopIteration as stop:
        result: T = stop.value
        return result


class EnvGroup(GroupView):
    """Env instances made together by ``BatchClient.make``; every call takes a batch.

    Calls are answered in the order of the env ids they name (all the group's by default).
    ``send()`` / ``recv()`` are EnvPool's asynchronous pair: after ``send()``, call ``recv()``
    until every sent env id has come back; ``recv()`` returns whichever sub-batches finished.
    """

    def __init__(self, transport: Transport, state: GroupState) -> None:
        super().__init__(state)
        self._transport = transport

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
        return drive(self._transport, reset_flow(state, state.resolve(env_ids), seed, kwargs))

    def step(
        self, actions: Actions, env_ids: EnvIdsArg = None, *, timeout_s: float | None = None
    ) -> BatchResult:
        """Step ``env_ids`` (all by default) with one action each, in the same order.
        ``timeout_s``: this step's deadline (OpenEnv's ``timeout_s``), over the group's own; an
        env that outruns it answers :class:`StepTimeout`.

        Raises :class:`BatchSizeMismatch`, :class:`EnvIdsNotInGroup`, :class:`ClosedError`,
        :class:`AlreadyPendingCall`, :class:`RequestTimeout`; env failures land in ``errors``.
        """
        state = self._state
        return drive(self._transport, step_flow(state, actions, state.resolve(env_ids), timeout_s))

    def send(
        self, actions: Actions, env_ids: EnvIdsArg = None, *, timeout_s: float | None = None
    ) -> None:
        """Start stepping ``env_ids`` and return at once; collect the answers with ``recv()``.

        Raises as ``step()`` does, and :class:`TransportError` when the send queue is full.
        """
        state = self._state
        subs, requests = step_requests(state, actions, state.resolve(env_ids), timeout_s)
        # All at once: a sub-batch over the limits must not leave the others sent and unseen.
        for request_id, sub in zip(self._transport.send(requests), subs, strict=True):
            state.sent(request_id, sub)

    def recv(self, timeout: float | None = None) -> BatchResult:
        """The sub-batches of earlier ``send()`` calls that have finished (at least one).

        Raises :class:`NoPendingCall` when nothing was sent, :class:`RequestTimeout` when
        nothing finished within ``timeout`` seconds (the calls stay pending), and
        :class:`BrokerLost` when the broker stopped answering (the calls are forgotten).
        """
        state = self._state
        try:
            answers = self._transport.wait_any(state.awaited(), timeout)
        except BrokerLost:
            state.forget_in_flight()
            raise
        return completed_steps(state, answers)

    def state(self, env_ids: EnvIdsArg = None) -> list[Any]:
        """Each env's State model (a dict with ``as_dicts``), in env id order. Raises the first
        env's error if any failed."""
        state = self._state
        return drive(self._transport, state_flow(state, state.resolve(env_ids)))

    def close(self) -> None:
        """Close every env of the group and free its slots. Closing twice does nothing."""
        drive(self._transport, close_flow(self._state), CLOSE_TIMEOUT)

    def __enter__(self) -> EnvGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BatchClient:
    """Connects to a broker and makes env groups.

    ``BatchClient(address)`` then ``make(env, num_envs)``; or ``BatchClient(address, env=...,
    num_envs=...)`` to make one group at once and call ``reset`` / ``step`` / ``state`` /
    ``send`` / ``recv`` on the client directly. ``address`` is the broker's frontend, reached
    over zmq; pass ``transport=`` instead (and no address) to use another transport, such as
    ``broker.inprocess``'s; the client closes it. ``curve_dir``: the bundle folder ``openenv-broker
    keys add --client NAME`` wrote (or its :class:`~openenv_zmq.curve.CurveKeys`), for a broker
    started with ``--curve-dir``. Raises :class:`BrokerUnreachable` when no broker answers
    within ``connect_timeout`` seconds (with CURVE, also when the broker refuses the key: the
    message says so), :class:`CurveKeyError` for a bundle that cannot be read,
    :class:`ClientError` when both or neither of ``address`` and ``transport`` are given, or
    ``curve_dir`` with ``transport``.
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
        transport: Transport | None = None,
        curve_dir: CurveDir | None = None,
        **kwargs: Any,
    ) -> None:
        if (address is None) == (transport is None):
            raise ClientError("pass either a broker address or a transport")
        if transport is not None and curve_dir is not None:
            raise ClientError("curve_dir= is for the client's own zmq transport, not transport=")
        self._transport = transport or ZmqTransport(
            str(address), timeout, limits, client_keys(curve_dir)
        )
        spec = None
        if env is not None:
            options = dict(
                autoreset=autoreset, as_dicts=as_dicts, concurrency=concurrency, timeout_s=timeout_s
            )
            spec = group_spec(env, num_envs, options, env_kwargs, kwargs)
        self._state = ClientState(spec, connect_timeout, curve=curve_dir is not None)
        try:
            self._transport.exchange([Message(Op.PING)], connect_timeout)
            self._state.connected = True
            if spec is not None:
                self._state.default = drive(self._transport, make_flow(self._state, spec))
        except RequestTimeout:
            self._transport.close()
            raise unreachable(self.address, connect_timeout, self._state.curve) from None
        except BaseException:
            self.close()
            raise

    @property
    def address(self) -> str:
        """Where the broker is (the transport's address)."""
        return self._transport.address

    def make(
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
    ) -> EnvGroup:
        """Place ``num_envs`` instances of ``env`` on workers and create them.

        ``kwargs`` (and ``env_kwargs=``, for argument names the client takes itself) go to
        every instance's constructor unchanged. The rest are the runtime's own options:

        - ``autoreset``: Gymnasium's autoreset mode, applied by the workers;
        - ``as_dicts``: observations and states come back as the decoded dicts, not models;
        - ``concurrency``: how many of these envs' resets and steps may run at once on each
          worker. A sync env that blocks on I/O then runs on that many threads (the class's
          ``STEP_CONCURRENCY`` is the default); an env with its own ``async def step_async`` is
          awaited, all of a batch together unless this bounds it. CPU-bound sync envs leave it
          unset and step inline, one after the other, which is fastest for them;
        - ``timeout_s``: a wall-clock deadline for each reset and step (a step's own
          ``timeout_s`` overrides it). An env that takes OpenEnv's ``timeout_s`` is given it and
          a little longer to answer; one that outruns it answers :class:`StepTimeout`, its
          instance is discarded, and ``reset()`` builds a new one.

        Raises :class:`NoWorkerAvailable` when the live workers hosting ``env`` lack the slots,
        :class:`ClientError` for a bad option, or the first env's constructor error.
        """
        options = dict(
            autoreset=autoreset, as_dicts=as_dicts, concurrency=concurrency, timeout_s=timeout_s
        )
        spec = group_spec(env, num_envs, options, env_kwargs, kwargs)
        return EnvGroup(self._transport, drive(self._transport, make_flow(self._state, spec)))

    def status(self) -> dict[str, Any]:
        """The broker's view: workers, their liveness, env slots used/free, steps served."""
        self._state.check_open()
        [answer] = self._transport.exchange([Message(Op.STATUS)])
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
        """The group made by the constructor's ``env=``; raises :class:`ClientError` if none."""
        return EnvGroup(self._transport, self._state.default_group())

    def reset(
        self, seed: Seeds = None, env_ids: EnvIdsArg = None, kwargs: ResetKwargs = None
    ) -> BatchResult:
        """``reset`` of the default group (see :meth:`EnvGroup.reset`)."""
        return self.envs.reset(seed, env_ids, kwargs)

    def step(
        self, actions: Actions, env_ids: EnvIdsArg = None, *, timeout_s: float | None = None
    ) -> BatchResult:
        """``step`` of the default group (see :meth:`EnvGroup.step`)."""
        return self.envs.step(actions, env_ids, timeout_s=timeout_s)

    def send(
        self, actions: Actions, env_ids: EnvIdsArg = None, *, timeout_s: float | None = None
    ) -> None:
        """``send`` of the default group (see :meth:`EnvGroup.send`)."""
        self.envs.send(actions, env_ids, timeout_s=timeout_s)

    def recv(self, timeout: float | None = None) -> BatchResult:
        """``recv`` of the default group (see :meth:`EnvGroup.recv`)."""
        return self.envs.recv(timeout)

    def state(self, env_ids: EnvIdsArg = None) -> list[Any]:
        """``state`` of the default group (see :meth:`EnvGroup.state`)."""
        return self.envs.state(env_ids)

    def close(self) -> None:
        """Close every group made here (best effort), then the transport."""
        if self._state.closed:
            return
        self._state.closed = True
        try:
            for group in self._state.open_groups():
                drive(self._transport, close_flow(group), CLOSE_TIMEOUT)
        except TransportError:
            pass  # the broker is gone: its slots went with it
        finally:
            self._transport.close()

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
