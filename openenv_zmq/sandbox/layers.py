"""The sandbox's layers, which of them the operator requires, and the limits they enforce.

| layer         | stops                                                        | default     |
|---------------|--------------------------------------------------------------|-------------|
| ``seccomp``   | sockets, exec, new processes, ptrace, mounts, namespaces,    | required    |
|               | signals to other processes (with ``no_new_privs``)           |             |
| ``rlimits``   | memory, CPU time, file size, open files, core dumps          | required    |
| ``uid``       | reaching the worker's or another session's files, ``/proc``  | best effort |
|               | and processes (a uid per session; only a root worker can)    |             |
| ``netns``     | any network, even if a socket were had (one empty network    | best effort |
|               | namespace per zygote; needs root or user namespaces)         |             |
| ``pids-cgroup`` | process floods, as a backstop to seccomp (a writable       | best effort |
|               | pids cgroup)                                                 |             |

Always on, not layers one can lower: an empty environment, no inherited descriptors, an empty
private working directory, death with the parent, a wall-clock deadline per call (a kill).

A layer's state travels as text: ``"on"``, ``"on: <detail>"`` or ``"off: <why>"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from openenv_zmq.errors import SandboxError


class Layer(StrEnum):
    SECCOMP = "seccomp"
    RLIMITS = "rlimits"
    UID = "uid"
    NETNS = "netns"
    PIDS_CGROUP = "pids-cgroup"


REQUIRED_BY_DEFAULT = frozenset({Layer.SECCOMP, Layer.RLIMITS})


@dataclass(frozen=True)
class SessionLimits:
    """What one session process may use (``rlimits``) and what all of a zygote's may
    (``pids-cgroup``)."""

    memory_mb: int = 512
    """Address space a session may add to what it inherits from the zygote."""
    cpu_s: int = 300
    """CPU seconds over the session process's life (an episode); the deadline bounds a call."""
    file_mb: int = 16
    open_files: int = 64
    pids_max: int = 16384
    """Processes and threads of the zygote and all its sessions together."""


@dataclass(frozen=True)
class SandboxPolicy:
    """Which layers must be had (a missing one is a :class:`SandboxError` at start) and the
    limits. The others are had where the kernel and privileges allow, and reported."""

    required: frozenset[Layer] = REQUIRED_BY_DEFAULT
    limits: SessionLimits = field(default_factory=SessionLimits)

    def adjusted(self, require: Iterable[Layer] = (), lower: Iterable[Layer] = ()) -> SandboxPolicy:
        """The policy with layers raised to required and others lowered to best effort."""
        return replace(self, required=(self.required | set(require)) - set(lower))


def is_on(state: str) -> bool:
    return state == "on" or state.startswith("on:")


def check_required(policy: SandboxPolicy, states: Mapping[str, str]) -> None:
    """Raise :class:`SandboxError` naming every required layer that is off, and why."""
    missing = [
        f"{layer} ({states.get(layer, 'off: not attempted')})"
        for layer in sorted(policy.required)
        if not is_on(states.get(layer, "off"))
    ]
    if missing:
        raise SandboxError(
            f"required sandbox layer(s) unavailable: {'; '.join(missing)}. "
            "Lower them explicitly with --sandbox-optional LAYER if this is acceptable."
        )


def summary(states: Mapping[str, str]) -> str:
    """One line for status: the layers that are on, then the ones that are off."""
    on = [name for name, state in states.items() if is_on(state)]
    off = [name for name, state in states.items() if not is_on(state)]
    return ", ".join(on) + (f" (off: {', '.join(off)})" if off else "")
