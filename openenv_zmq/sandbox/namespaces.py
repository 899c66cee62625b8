"""An empty network namespace for a zygote and its sessions (best effort).

In it there is only a loopback interface, down: no address can be reached, not even this
machine's. Root gets one directly; another user only inside a new user namespace, which the
kernel or a container's seccomp profile may forbid.
"""

from __future__ import annotations

import ctypes
import os

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> int:
    return 0 if _libc.unshare(flags) == 0 else ctypes.get_errno()


def _map_own_ids(uid: int, gid: int) -> None:
    with open("/proc/self/setgroups", "w") as setgroups:
        setgroups.write("deny")
    with open("/proc/self/uid_map", "w") as uid_map:
        uid_map.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as gid_map:
        gid_map.write(f"{gid} {gid} 1")


def enter_empty_netns() -> str:
    """Move this (single-threaded) process into a new network namespace; the layer's state."""
    errno = _unshare(_CLONE_NEWNET)
    if errno == 0:
        return "on"
    if os.geteuid() == 0:
        return f"off: unshare(CLONE_NEWNET): {os.strerror(errno)}"
    uid, gid = os.geteuid(), os.getegid()
    errno = _unshare(_CLONE_NEWUSER | _CLONE_NEWNET)
    if errno != 0:
        return f"off: unshare(CLONE_NEWUSER | CLONE_NEWNET): {os.strerror(errno)}"
    try:
        _map_own_ids(uid, gid)
    except OSError as exc:
        return f"on: in a user namespace (ids unmapped: {exc.strerror})"
    return "on: in a user namespace"
