"""The steps a freshly forked session process takes before it runs anything it was sent.

Run in this order (:func:`harden`): death with the parent, no descriptors but its own socket,
``/dev/null`` for stdio, an empty private working directory, rlimits, an unprivileged uid,
not dumpable (no other process of that uid may read its memory), then seccomp, last because it
forbids what the steps before it need. Each returns its layer's state; a required layer that
fails is a :class:`SandboxError` raised by the caller's :func:`~.layers.check_required`.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal

from openenv_zmq.errors import SandboxError
from openenv_zmq.sandbox import seccomp
from openenv_zmq.sandbox.layers import Layer, SessionLimits

NOBODY = 65534
SESSION_UID_BASE = 1 << 30
"""A root worker runs each session as ``SESSION_UID_BASE + pid``: a uid of its own, no other
process's (pids stay below 2**22), so sessions cannot reach each other's files or processes."""
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_MIB = 2**20

_libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise SandboxError(f"prctl({option}, {value}): {os.strerror(errno)}")


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL when the parent dies; if it already has, die now (the signal would never come)."""
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def keep_only_fd(fd: int) -> None:
    """Close every inherited descriptor but ``fd``; stdio becomes ``/dev/null``."""
    null = os.open(os.devnull, os.O_RDWR)
    for stdio in (0, 1, 2):
        if stdio != null:
            os.dup2(null, stdio)
    os.closerange(3, fd)
    os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))


def session_uid() -> int:
    return SESSION_UID_BASE + os.getpid()


def enter_workdir(base: str, owner: int | None) -> str:
    """Make ``base/<pid>`` (mode 0700, owned by ``owner`` when given) and go there."""
    path = os.path.join(base, str(os.getpid()))
    os.mkdir(path, 0o700)
    if owner is not None:
        os.chown(path, owner, owner)
    os.chdir(path)
    return path


def _vm_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def apply_rlimits(limits: SessionLimits) -> str:
    """Soft and hard limits alike, so the session cannot raise them back."""
    # The address space limit counts what the zygote already mapped: the session gets memory_mb
    # on top of it, whatever the interpreter and its imports weigh.
    address_space = _vm_bytes() + limits.memory_mb * _MIB
    for kind, value in (
        (resource.RLIMIT_AS, address_space),
        (resource.RLIMIT_CPU, limits.cpu_s),
        (resource.RLIMIT_FSIZE, limits.file_mb * _MIB),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(kind, (value, value))
    return (
        f"on: memory +{limits.memory_mb} MiB, cpu {limits.cpu_s} s, "
        f"files {limits.file_mb} MiB, {limits.open_files} descriptors"
    )


def drop_uid(uid: int) -> str:
    """Become ``uid`` (with no groups) when root; else ``nobody`` where ``uid`` does not exist
    (a user namespace mapping only a few); a non-root worker cannot switch uid."""
    if os.geteuid() != 0:
        return f"off: the worker runs as uid {os.geteuid()}, not root; sessions share its uid"
    os.setgroups([])
    try:
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    except OSError:
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        return f"on: uid {NOBODY}, shared by all sessions (no uid of their own here)"
    return f"on: a uid of its own ({SESSION_UID_BASE} + pid)"


def harden(
    keep_fd: int, parent_pid: int, workdir_base: str, limits: SessionLimits
) -> dict[str, str]:
    """Every per-process step, in order; returns the per-process layers' states. Raises
    :class:`SandboxError` (or ``OSError``) for a step that is always required."""
    keep_only_fd(keep_fd)
    uid = session_uid()
    enter_workdir(workdir_base, uid if os.geteuid() == 0 else None)
    states: dict[str, str] = {}
    try:
        states[Layer.RLIMITS] = apply_rlimits(limits)
    except (OSError, ValueError) as exc:
        states[Layer.RLIMITS] = f"off: {exc}"
    try:
        states[Layer.UID] = drop_uid(uid)
    except OSError as exc:
        states[Layer.UID] = f"off: {exc}"
    # Both are reset by a change of credentials, so they come after it.
    die_with_parent(parent_pid)
    prctl(_PR_SET_DUMPABLE, 0)
    try:
        seccomp.install()
        states[Layer.SECCOMP] = f"on: denies {', '.join(seccomp.FILTERED_SYSCALLS)}"
    except SandboxError as exc:
        states[Layer.SECCOMP] = f"off: {exc}"
    return states
