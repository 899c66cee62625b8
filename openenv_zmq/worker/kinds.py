"""What a worker knows of an env class (:class:`EnvKind`), of the envs one CREATE made
(:class:`Runtime`) and of one env instance (:class:`Slot`). Worked out once, read on every call.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import BaseModel

from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.env import VectorEnvironment
from openenv_zmq.errors import EnvNotFound
from openenv_zmq.registry import EnvTypes, env_types, mcp_actions, overrides
from openenv_zmq.worker.status import SlotStatus


@dataclass(slots=True, eq=False)
class EnvKind:
    """What the worker needs to know about one env class, worked out once per class."""

    cls: type[Any]
    types: EnvTypes
    reset_params: frozenset[str] | None
    """Keyword arguments ``reset`` accepts; ``None`` when it takes ``**kwargs`` (all pass)."""
    vector: bool
    async_reset: bool = False
    """The class has its own ``async def reset_async``: it is awaited on the worker's loop."""
    async_step: bool = False
    """The class has its own ``async def step_async``."""
    takes_timeout: bool = False
    """``step`` (or ``step_async``) accepts OpenEnv's ``timeout_s``."""
    concurrency: int | None = None
    """The class's ``STEP_CONCURRENCY``: how many of its blocking steps may run at once on a
    worker's threads; ``None`` when it does not say."""
    tagged_actions: dict[str, type[BaseModel]] = field(default_factory=dict)
    """An MCP env's ``ListToolsAction`` / ``CallToolAction`` by their ``type`` tag: an action
    carrying one of these tags is that model (OpenEnv's server decides the same way)."""

    def action_model(self, action: Any) -> type[BaseModel]:
        """The model one action (a decoded map) is validated against."""
        if self.tagged_actions and type(action) is dict:
            tagged = self.tagged_actions.get(action.get("type"))  # type: ignore[arg-type]
            if tagged is not None:
                return tagged
        return self.types.action

    @classmethod
    def of(cls, env_cls: type) -> EnvKind:
        types = env_types(env_cls)
        if issubclass(env_cls, VectorEnvironment):
            return cls(env_cls, types, None, vector=True)
        reset = cast(Any, env_cls).reset  # resolve_env checked that it exists
        async_step = overrides_async(env_cls, "step_async")
        step = getattr(env_cls, "step_async" if async_step else "step")
        concurrency = getattr(env_cls, "STEP_CONCURRENCY", None)
        if concurrency is not None and (type(concurrency) is not int or concurrency < 1):
            raise EnvNotFound(
                f"{env_cls.__qualname__}.STEP_CONCURRENCY must be a positive int, "
                f"not {concurrency!r}"
            )
        return cls(
            env_cls,
            types,
            _keywords(reset),
            vector=False,
            async_reset=overrides_async(env_cls, "reset_async"),
            async_step=async_step,
            takes_timeout=_takes(step, "timeout_s"),
            concurrency=concurrency,
            tagged_actions=mcp_actions(env_cls),
        )


def overrides_async(env_cls: type, name: str) -> bool:
    """Whether ``env_cls`` defines ``async def name`` of its own. The default of OpenEnv's (and
    our) ``Environment`` base only calls the sync method, so it does not count (OpenEnv's server
    decides the same way)."""
    return overrides(env_cls, name) and inspect.iscoroutinefunction(getattr(env_cls, name))


def _keywords(method: Any) -> frozenset[str] | None:
    """The keyword arguments ``method`` accepts; ``None`` when it takes ``**kwargs``."""
    params = list(inspect.signature(method).parameters.values())[1:]  # drop self
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )


def _takes(method: Any, keyword: str) -> bool:
    accepted = _keywords(method)
    return accepted is None or keyword in accepted


@dataclass(slots=True, eq=False, weakref_slot=True)
class Runtime:
    """How the envs of one CREATE run: shared by their slots, options of ``make`` applied to the
    env class's own defaults."""

    kind: EnvKind
    kwargs: dict[str, Any]
    """The constructor's keyword arguments, kept to build a fresh instance after a timeout."""
    autoreset: AutoresetMode = AutoresetMode.DISABLED
    concurrency: int | None = None
    """At most this many calls of these envs run at once on this worker (``None``: all of a
    request's calls for an async env; one at a time, inline, for a sync env)."""
    timeout_s: float | None = None
    """Deadline of every reset and step, unless a step names its own."""
    steps_inline: bool = field(init=False)
    """Steps without a deadline of their own run inline: the serial fast path."""
    resets_inline: bool = field(init=False)

    def __post_init__(self) -> None:
        # one call at a time with no deadline: a sync env steps on the worker's thread itself
        threaded = self.concurrency is not None and self.concurrency > 1
        serial = not threaded and self.timeout_s is None
        self.steps_inline = serial and not self.kind.async_step
        self.resets_inline = serial and not self.kind.async_reset


@dataclass(slots=True, eq=False)
class Slot:
    env: Any
    """The instance; ``None`` once it was abandoned at a deadline (``reset`` builds another)."""
    runtime: Runtime
    status: SlotStatus = SlotStatus.NEEDS_RESET
    busy: bool = False
    """A reset or step of this env is running off the worker's thread."""
    closed: bool = False
    """Forgotten by the table; closed when its running call ends if it was busy."""

    @property
    def kind(self) -> EnvKind:
        return self.runtime.kind

    def close(self) -> None:
        """Close the instance, unless a call still runs in it (then :meth:`settle` closes it)."""
        self.closed = True
        if self.busy or self.env is None:
            return
        # resolve_env only requires reset/step/state, so an env class may have no close()
        close = getattr(self.env, "close", None)
        if close is not None:
            close()
