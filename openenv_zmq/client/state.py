"""Everything a client knows, with no I/O: its env groups, what is in flight, what the broker said.

The sync and asyncio facades keep no state of their own beyond their transport: all of it lives
here, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.client.batching import (
    ArrayLayout,
    EnvModels,
    Placement,
    Positions,
    SubBatch,
    Targets,
)
from openenv_zmq.client.results import BatchResult
from openenv_zmq.errors import (
    AlreadyPendingCall,
    BrokerUnreachable,
    ClientError,
    ClosedError,
    NoPendingCall,
    NoWorkerAvailable,
    SessionLost,
    WorkerLost,
)
from openenv_zmq.protocol import EnvIds
from openenv_zmq.registry import env_types, related_models, resolve_env
from openenv_zmq.spaces import Space, space_from_wire
from openenv_zmq.types import Observation

WORKER_POLL_SECONDS = 0.05
"""How often ``wait_for_workers`` asks the broker again."""


def local_models(env: str) -> EnvModels:
    """The models of ``env`` as this process finds it, by the name the client itself asked for:
    never from a module a worker names. No models (dicts with every field) where this process
    cannot import the env; no observation model for an env that declares none (the base class
    would refuse the fields of whatever subclass the env returns), but the env's own models
    (``known``) still build the rows a worker says are of their classes."""
    try:
        cls = resolve_env(env)
        types = env_types(cls)
    except Exception:  # the env may be installed only where the workers run: dicts, never an error
        return EnvModels()
    observation = None if types.observation is Observation else types.observation
    return EnvModels(observation, types.state, related_models(cls))


@dataclass(frozen=True)
class GroupSpec:
    """What ``make`` was asked for."""

    env: str
    num_envs: int = 1
    kwargs: dict[str, Any] = field(default_factory=dict)
    autoreset: AutoresetMode = AutoresetMode.DISABLED
    as_dicts: bool = False
    """Observations and states stay the decoded dicts: no env models are built."""
    concurrency: int | None = None
    """At most this many calls of the group's envs run at once on each worker."""
    timeout_s: float | None = None
    """Deadline of each reset and step, unless a step names its own."""


def group_spec(
    env: str,
    num_envs: int,
    options: dict[str, Any],
    env_kwargs: dict[str, Any] | None,
    kwargs: dict[str, Any],
) -> GroupSpec:
    """What a ``make`` call (or a client constructor's ``env=``) asks for. ``options`` are its
    runtime options by name (``autoreset``, ``as_dicts``, ``concurrency``, ``timeout_s``); the
    env's constructor gets ``**kwargs`` and ``env_kwargs=`` (for names the client takes itself,
    such as ``timeout_s``). Raises :class:`ClientError` for a name in both."""
    both = sorted(set(kwargs) & set(env_kwargs or {}))
    if both:
        raise ClientError(f"env argument(s) {both} given both as keywords and in env_kwargs")
    try:
        autoreset = AutoresetMode(options["autoreset"])
    except ValueError as exc:
        raise ClientError(str(exc)) from None
    options = {**options, "autoreset": autoreset}
    return GroupSpec(env, num_envs, {**(env_kwargs or {}), **kwargs}, **options)


def check_timeout(timeout_s: float | None) -> None:
    """Raises :class:`ClientError` unless ``timeout_s`` is ``None`` or a positive finite number."""
    if timeout_s is not None and not (
        type(timeout_s) in (int, float) and 0 < timeout_s < float("inf")
    ):
        raise ClientError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")


@dataclass
class GroupState:
    """Everything a client knows about one env group."""

    spec: GroupSpec
    group: int
    """The group's id at the broker, which every request for its envs names."""
    placement: Placement
    models: EnvModels = field(init=False, default_factory=EnvModels)
    """Found by :func:`local_models` from the env name asked for; none with ``as_dicts``."""
    observation_layout: ArrayLayout | None = None
    """Set for array envs: observations come back as one array."""
    action_layout: ArrayLayout | None = None
    observation_space: Space | None = None
    """An array env's spaces, as its workers declared them."""
    action_space: Space | None = None
    lost: set[int] = field(default_factory=set)
    in_flight: dict[int, SubBatch] = field(default_factory=dict)
    """Request id -> the STEP sub-batch ``send()`` sent with it and ``recv()`` has not returned."""
    closed: bool = False

    @property
    def env(self) -> str:
        return self.spec.env

    @property
    def env_ids(self) -> EnvIds:
        return self.placement.env_ids

    def __post_init__(self) -> None:
        if not self.spec.as_dicts:
            self.models = local_models(self.spec.env)

    def learn_spaces(self, meta: Mapping[str, Any]) -> None:
        """Read what a CREATE answer says about an array env's spaces."""
        spaces = meta.get("spaces", {})
        if "observation" in spaces:
            self.observation_layout = ArrayLayout.from_wire(spaces["observation"])
            self.observation_space = space_from_wire(spaces["observation"])
        if "action" in spaces:
            self.action_layout = ArrayLayout.from_wire(spaces["action"])
            self.action_space = space_from_wire(spaces["action"])

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError(f"the {self.env!r} env group is closed")

    def resolve(self, env_ids: Sequence[int] | EnvIds | None) -> Targets:
        """The env ids a call names (all the group's when ``None``) and their workers.

        Raises :class:`EnvIdsNotInGroup` for ids not in the group.
        """
        if env_ids is None:
            return Targets(self.placement.env_ids, self.placement.workers)
        # A copy: a request in flight (send()) must not see the caller change its array.
        ids = np.array(env_ids, dtype=np.int64).reshape(-1)
        return Targets(ids, self.placement.locate(ids))

    def note_lost(self, pieces: Sequence[tuple[Positions, BatchResult]]) -> None:
        for _, piece in pieces:
            for env_id, error in piece.errors.items():
                if isinstance(error, WorkerLost | SessionLost):
                    self.lost.add(env_id)

    def check_not_in_flight(self, env_ids: EnvIds) -> None:
        """Raise :class:`AlreadyPendingCall` if ``send()`` has any of ``env_ids`` in flight."""
        if not self.in_flight:
            return
        busy = np.concatenate([sub.env_ids for sub in self.in_flight.values()])
        clash = env_ids[np.isin(env_ids, busy)]
        if len(clash):
            shown = np.unique(clash)[:10].tolist()
            raise AlreadyPendingCall(
                f"env ids still in flight from send(): {shown}; recv() them first"
            )

    def sent(self, request_id: int, sub: SubBatch) -> None:
        """``send()`` sent ``sub`` as request ``request_id``."""
        self.in_flight[request_id] = sub

    def forget_in_flight(self) -> None:
        """What ``send()`` sent will never be answered (the broker is lost): its env ids are
        free to step again."""
        self.in_flight.clear()

    def awaited(self) -> list[int]:
        """The request ids ``recv()`` waits for; raises :class:`NoPendingCall` when none."""
        if not self.in_flight:
            raise NoPendingCall("recv() without a send() in flight")
        return list(self.in_flight)


@dataclass
class ClientState:
    """Everything a client knows beyond its groups' states: its groups and its lifecycle."""

    default_spec: GroupSpec | None
    """The group the constructor's ``env=`` asked for, made on connect."""
    connect_timeout: float
    groups: list[GroupState] = field(default_factory=list)
    default: GroupState | None = None
    connected: bool = False
    closed: bool = False
    curve: bool = False
    """The client holds CURVE keys: a broker that refuses them cannot be told from none."""

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError("the client is closed")

    def default_group(self) -> GroupState:
        """The group made by the constructor's ``env=``; raises :class:`ClientError` if none."""
        if self.default is None:
            raise ClientError(
                "this client has no default env group: pass env=... to the constructor or use"
                " make()"
            )
        return self.default

    def open_groups(self) -> list[GroupState]:
        return [group for group in self.groups if not group.closed]


def live_workers(status: dict[str, Any], env: str | None) -> list[dict[str, Any]]:
    """The live workers of a ``status()`` answer, those hosting ``env`` when given."""
    return [
        w for w in status["workers"] if w["state"] == "READY" and (env is None or env in w["envs"])
    ]


def too_few_workers(joined: int, count: int, env: str | None, timeout: float) -> NoWorkerAvailable:
    hosting = f" hosting {env!r}" if env is not None else ""
    return NoWorkerAvailable(f"{joined} of {count} workers{hosting} joined within {timeout:g} s")


def unreachable(address: str, timeout: float, curve: bool = False) -> BrokerUnreachable:
    """The first contact got no answer. With CURVE, a broker that refuses the client's key (or
    that is not the one its bundle names, or that runs without CURVE) looks the same as none."""
    hint = (
        " (with CURVE: is this client's key in the broker's clients/ allowlist, is the bundle's"
        " broker.key that broker's, and does the broker run with --curve-dir? Its log names"
        " refused keys)"
        if curve
        else ""
    )
    return BrokerUnreachable(f"no broker answered at {address} within {timeout:g} s{hint}")
