"""What a worker does about contained sessions at start: whether its envs need them, and how.

An env that runs untrusted code names the handler its sessions run in a class attribute,
``SESSION_FACTORY = "module:attr"``. A worker hosting such an env starts its zygote (with those
modules imported) first thing, before it opens a socket or a thread, and reports the layers.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from openenv_zmq.registry import resolve_env
from openenv_zmq.sandbox.host import InProcessHost, configure, session_host
from openenv_zmq.sandbox.layers import SandboxPolicy


@dataclass(frozen=True)
class SandboxOptions:
    """The operator's choices (worker flags); nothing a client sends can change them."""

    policy: SandboxPolicy = field(default_factory=SandboxPolicy)
    unsafe_in_process: bool = False
    """Run session code inside the worker, uncontained: for trusted code only."""


def session_factories(envs: Sequence[str]) -> list[str]:
    """The session factories the named envs declare, in order, once each."""
    factories: list[str] = []
    for name in envs:
        factory = getattr(resolve_env(name), "SESSION_FACTORY", None)
        if isinstance(factory, str) and factory not in factories:
            factories.append(factory)
    return factories


def start_sandbox(envs: Sequence[str], options: SandboxOptions) -> Mapping[str, str]:
    """Configure and start this process's session host if an env of ``envs`` needs one; its
    layers, or an empty map. Raises :class:`~openenv_zmq.errors.SandboxError` when a required
    layer cannot be had."""
    factories = session_factories(envs)
    if not factories:
        return {}
    if options.unsafe_in_process:
        configure(InProcessHost)
    else:
        from openenv_zmq.sandbox.contained import ContainedHost

        # Each session holds a socket and a pidfd here: thousands need more than a default 1024.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        configure(lambda: ContainedHost(options.policy, factories))
    return dict(session_host().layers)
