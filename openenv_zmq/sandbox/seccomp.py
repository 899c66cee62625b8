"""The seccomp-BPF layer of a session process: the system calls untrusted code must not make.

A session process installs this filter as the last step of its hardening, after its rlimits and
its own uid are in place. From then on the kernel refuses it, and every thread and child it could
still make, the calls that would let it reach past its process: opening sockets (it talks to its
worker only through the socket it inherited), running programs, starting processes, reading or
signalling other processes, mounting and entering namespaces, changing credentials, and the kernel
interfaces that are more attack surface than use (bpf, perf, io_uring, modules, keyrings...). A
refused call fails with ``EPERM``, so the code sees an ordinary :class:`PermissionError`; a call
made under another architecture's calling convention kills the process.

It is a deny list: everything not named here is allowed, because the interpreter and the agent's
libraries need the rest (memory, files, clocks, futexes, threads, randomness) and an allow list
would break them with each new glibc or Python. It is one layer among several, not a sandbox on
its own; its limits are the other layers' job:

- ``clone3`` passes its flags in a struct that a filter cannot read, so it is refused with
  ``ENOSYS``: glibc then falls back to ``clone``, whose flags are checked (a thread may start, a
  process may not).
- It does not look at paths: which files can be read or written is left to the uid, the rlimits
  and the working directory.
- A system call added to Linux after these tables is allowed until it is listed here.

:func:`build_filter` assembles the program and does no I/O; :func:`install` loads it into the
calling process, or raises :class:`~openenv_zmq.errors.SandboxError`: the layer is required.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from openenv_zmq.errors import SandboxError

__all__ = [
    "AARCH64_SYSCALLS",
    "FILTERED_SYSCALLS",
    "X86_64_SYSCALLS",
    "Instruction",
    "Label",
    "assemble",
    "build_filter",
    "install",
]

FILTERED_SYSCALLS: Mapping[str, tuple[str, ...]] = {
    "network": ("socket", "socketpair", "connect", "bind", "listen", "accept", "accept4"),
    "exec": ("execve", "execveat"),
    # clone only for a thread; clone3 is refused with ENOSYS (see the docstring)
    "fork": ("fork", "vfork", "clone", "clone3"),
    "ptrace": (
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "pidfd_open",
        "pidfd_getfd",
        "kcmp",
    ),
    # kill, tkill and tgkill only to the process itself
    "signals to other processes": ("kill", "tkill", "tgkill", "pidfd_send_signal"),
    # only pid 0 or its own: resource.setrlimit() is prlimit64(0, ...)
    "limits of other processes": ("prlimit64",),
    "mount": (
        "mount",
        "umount2",
        "pivot_root",
        "chroot",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "move_mount",
        "open_tree",
        "open_tree_attr",
        "mount_setattr",
    ),
    "namespaces": ("unshare", "setns"),
    "credentials": (
        "setuid",
        "setgid",
        "setreuid",
        "setregid",
        "setresuid",
        "setresgid",
        "setgroups",
        "setfsuid",
        "setfsgid",
        "capset",
    ),
    "kernel interfaces": (
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "keyctl",
        "add_key",
        "request_key",
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "reboot",
        "swapon",
        "swapoff",
        "iopl",
        "ioperm",
        "open_by_handle_at",
        "name_to_handle_at",
        "acct",
        "settimeofday",
        "clock_settime",
        "adjtimex",
        "clock_adjtime",
        "personality",
        "quotactl",
        "lookup_dcookie",
        "vhangup",
        # io_uring runs its operations in the kernel, where no filter sees them
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
    ),
}
"""What the filter refuses, by group; a worker reports the group names."""

# Numbers from 424 on (Linux 5.1 and later) are the same on every architecture.
_UNIFIED_SYSCALLS: Mapping[str, int] = {
    "pidfd_send_signal": 424,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "pidfd_open": 434,
    "clone3": 435,
    "pidfd_getfd": 438,
    "mount_setattr": 442,
    "open_tree_attr": 467,
}

# From Linux's arch/x86/entry/syscalls/syscall_64.tbl (checked against this machine's
# asm/unistd_64.h).
X86_64_SYSCALLS: Mapping[str, int] = {
    "socket": 41,
    "socketpair": 53,
    "connect": 42,
    "bind": 49,
    "listen": 50,
    "accept": 43,
    "accept4": 288,
    "execve": 59,
    "execveat": 322,
    "fork": 57,
    "vfork": 58,
    "clone": 56,
    "ptrace": 101,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "kill": 62,
    "tkill": 200,
    "tgkill": 234,
    "prlimit64": 302,
    "mount": 165,
    "umount2": 166,
    "pivot_root": 155,
    "chroot": 161,
    "unshare": 272,
    "setns": 308,
    "setuid": 105,
    "setgid": 106,
    "setreuid": 113,
    "setregid": 114,
    "setresuid": 117,
    "setresgid": 119,
    "setgroups": 116,
    "setfsuid": 122,
    "setfsgid": 123,
    "capset": 126,
    "bpf": 321,
    "perf_event_open": 298,
    "userfaultfd": 323,
    "keyctl": 250,
    "add_key": 248,
    "request_key": 249,
    "kexec_load": 246,
    "kexec_file_load": 320,
    "init_module": 175,
    "finit_module": 313,
    "delete_module": 176,
    "reboot": 169,
    "swapon": 167,
    "swapoff": 168,
    "iopl": 172,
    "ioperm": 173,
    "open_by_handle_at": 304,
    "name_to_handle_at": 303,
    "acct": 163,
    "settimeofday": 164,
    "clock_settime": 227,
    "adjtimex": 159,
    "clock_adjtime": 305,
    "personality": 135,
    "quotactl": 179,
    "lookup_dcookie": 212,
    "vhangup": 153,
    **_UNIFIED_SYSCALLS,
}

# From Linux's include/uapi/asm-generic/unistd.h, which arm64 uses. It has no fork, vfork,
# iopl or ioperm: glibc forks with clone there.
AARCH64_SYSCALLS: Mapping[str, int] = {
    "socket": 198,
    "socketpair": 199,
    "connect": 203,
    "bind": 200,
    "listen": 201,
    "accept": 202,
    "accept4": 242,
    "execve": 221,
    "execveat": 281,
    "clone": 220,
    "ptrace": 117,
    "process_vm_readv": 270,
    "process_vm_writev": 271,
    "kcmp": 272,
    "kill": 129,
    "tkill": 130,
    "tgkill": 131,
    "prlimit64": 261,
    "mount": 40,
    "umount2": 39,
    "pivot_root": 41,
    "chroot": 51,
    "unshare": 97,
    "setns": 268,
    "setuid": 146,
    "setgid": 144,
    "setreuid": 145,
    "setregid": 143,
    "setresuid": 147,
    "setresgid": 149,
    "setgroups": 159,
    "setfsuid": 151,
    "setfsgid": 152,
    "capset": 91,
    "bpf": 280,
    "perf_event_open": 241,
    "userfaultfd": 282,
    "keyctl": 219,
    "add_key": 217,
    "request_key": 218,
    "kexec_load": 104,
    "kexec_file_load": 294,
    "init_module": 105,
    "finit_module": 273,
    "delete_module": 106,
    "reboot": 142,
    "swapon": 224,
    "swapoff": 225,
    "open_by_handle_at": 265,
    "name_to_handle_at": 264,
    "acct": 89,
    "settimeofday": 170,
    "clock_settime": 112,
    "adjtimex": 171,
    "clock_adjtime": 266,
    "personality": 92,
    "quotactl": 60,
    "lookup_dcookie": 18,
    "vhangup": 58,
    **_UNIFIED_SYSCALLS,
}


@dataclass(frozen=True)
class _Arch:
    audit_arch: int
    """The ``AUDIT_ARCH_*`` the kernel puts in ``seccomp_data.arch`` for this calling convention."""
    syscalls: Mapping[str, int]
    seccomp_nr: int
    has_x32: bool
    """x86_64 also takes x32 calls: the same arch value, numbers with bit 30 set."""


_ARCHES: Mapping[str, _Arch] = {
    "x86_64": _Arch(0xC000003E, X86_64_SYSCALLS, seccomp_nr=317, has_x32=True),
    "aarch64": _Arch(0xC00000B7, AARCH64_SYSCALLS, seccomp_nr=277, has_x32=False),
}

# Classic BPF opcodes (linux/bpf_common.h), only those this filter uses
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_MAX_INSTRUCTIONS = 4096  # BPF_MAXINSNS
_MAX_JUMP = 255  # jt and jf are one byte each

# Actions (linux/seccomp.h)
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000

# Offsets into struct seccomp_data { int nr; u32 arch; u64 ip; u64 args[6]; }. Both supported
# architectures are little-endian, so an argument's low word comes first.
_NR = 0
_ARCH = 4
_ARGS = 16

_X32_SYSCALL_BIT = 0x40000000
_CLONE_THREAD = 0x00010000
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET: a thread may not bring a
# namespace of its own, or clone would do what unshare may not
_CLONE_NEW_NAMESPACES = 0x7E020000

# prctl(2) and seccomp(2)
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1


@dataclass(frozen=True)
class Instruction:
    """One classic-BPF instruction. A conditional jump names the :class:`Label` it goes to when
    its test holds (``jt``) or fails (``jf``); ``None`` is the next instruction."""

    code: int
    k: int
    jt: str | None = None
    jf: str | None = None


@dataclass(frozen=True)
class Label:
    """The place in a program that jumps to ``name`` land on: the next instruction."""

    name: str


def assemble(program: Sequence[Instruction | Label]) -> bytes:
    """Pack ``program`` as a ``struct sock_filter[]``, its labels resolved to relative jumps.

    Raises ``ValueError`` for a label that is unknown, defined twice, behind its jump, more than
    255 instructions ahead (classic BPF only jumps forward, by one byte) or past the last
    instruction, and for a program longer than the kernel's 4096 instructions.
    """
    positions: dict[str, int] = {}
    instructions: list[Instruction] = []
    for item in program:
        if isinstance(item, Label):
            if item.name in positions:
                raise ValueError(f"label {item.name!r} is defined twice")
            positions[item.name] = len(instructions)
        else:
            instructions.append(item)
    if len(instructions) > _MAX_INSTRUCTIONS:
        raise ValueError(f"{len(instructions)} instructions, over BPF's {_MAX_INSTRUCTIONS}")

    def offset(label: str | None, index: int) -> int:
        if label is None:
            return 0
        if label not in positions:
            raise ValueError(f"jump to unknown label {label!r}")
        distance = positions[label] - index - 1
        if not 0 <= distance <= _MAX_JUMP:
            raise ValueError(f"jump from instruction {index} to {label!r} spans {distance}")
        if positions[label] == len(instructions):
            raise ValueError(f"jump from instruction {index} to {label!r} lands past the end")
        return distance

    return b"".join(
        struct.pack("<HBBI", ins.code, offset(ins.jt, index), offset(ins.jf, index), ins.k)
        for index, ins in enumerate(instructions)
    )


def _load(offset: int) -> Instruction:
    return Instruction(_LD_W_ABS, offset)


def _jeq(k: int, then: str | None = None, otherwise: str | None = None) -> Instruction:
    return Instruction(_JEQ_K, k, then, otherwise)


def _ret(action: int) -> Instruction:
    return Instruction(_RET_K, action)


def _arg0_is_one_of(label: str, values: Iterable[int]) -> list[Instruction | Label]:
    """At ``label``: allow the call if its first argument, a ``pid_t``, is one of ``values``.

    The kernel reads only the argument's low word; glibc sign-extends it, so for a pid that is
    not negative the high word is 0, and a call that sets it otherwise is refused too.
    """
    return [
        Label(label),
        _load(_ARGS + 4),
        _jeq(0, otherwise="eperm"),
        _load(_ARGS),
        *(_jeq(value, then="allow") for value in values),
        _ret(_RET_ERRNO | errno.EPERM),
    ]


# Where a listed call goes instead of straight to EPERM
_RULES: Mapping[str, str] = {
    "clone": "clone",
    "clone3": "enosys",
    "kill": "own pid",
    "tkill": "own pid",
    "tgkill": "own pid",
    "prlimit64": "own pid or 0",
}


def build_filter(arch: str, own_pid: int) -> bytes:
    """The filter for a process ``own_pid`` running on ``arch`` (``platform.machine()``), as the
    packed ``struct sock_filter[]`` that :func:`install` loads.

    Raises :class:`~openenv_zmq.errors.SandboxError` for an architecture other than x86_64 and
    aarch64, and ``ValueError`` for a pid that is not positive.
    """
    spec = _ARCHES.get(arch)
    if spec is None:
        raise SandboxError(f"seccomp filter: architecture {arch} not supported")
    if not 0 < own_pid < 2**31:
        raise ValueError(f"own_pid must be a positive pid, not {own_pid}")
    program: list[Instruction | Label] = [
        _load(_ARCH),
        _jeq(spec.audit_arch, otherwise="wrong arch"),
        _load(_NR),
    ]
    if spec.has_x32:
        program.append(Instruction(_JGE_K, _X32_SYSCALL_BIT, "eperm"))
    names = [name for group in FILTERED_SYSCALLS.values() for name in group]
    program += [
        _jeq(spec.syscalls[name], then=_RULES.get(name, "eperm"))
        for name in names
        if name in spec.syscalls
    ]
    program += [
        _ret(_RET_ALLOW),
        Label("clone"),
        # clone's flags are an unsigned long, but the kernel keeps only their low word
        _load(_ARGS),
        Instruction(_JSET_K, _CLONE_NEW_NAMESPACES, "eperm"),
        Instruction(_JSET_K, _CLONE_THREAD, "allow", "eperm"),
        *_arg0_is_one_of("own pid", [own_pid]),
        *_arg0_is_one_of("own pid or 0", [0, own_pid]),
        Label("allow"),
        _ret(_RET_ALLOW),
        Label("eperm"),
        _ret(_RET_ERRNO | errno.EPERM),
        Label("enosys"),
        _ret(_RET_ERRNO | errno.ENOSYS),
        Label("wrong arch"),
        _ret(_RET_KILL_PROCESS),
    ]
    return assemble(program)


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def install(own_pid: int | None = None) -> None:
    """Load the filter into this process (``own_pid`` defaults to its pid) for good: its threads
    and any child it could still make inherit it, and nothing can remove it. Call it last, once
    nothing left to do needs a refused call (setting the uid, for one).

    Sets ``no_new_privs`` first (the kernel requires it of a process without ``CAP_SYS_ADMIN``).
    Every thread of the process is filtered, not only the caller. Raises
    :class:`~openenv_zmq.errors.SandboxError` naming why if the filter cannot be installed.
    """
    machine = platform.machine()
    # The filter kills calls from another calling convention, which a 32-bit interpreter on a
    # 64-bit kernel would make from its first call on.
    arch = machine if struct.calcsize("P") == 8 else f"{machine} (32-bit interpreter)"
    program = build_filter(arch, os.getpid() if own_pid is None else own_pid)
    libc = ctypes.CDLL(None, use_errno=True)
    # Unused arguments must be 0 and are read as unsigned longs: pass them at that width.
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, *map(ctypes.c_ulong, (1, 0, 0, 0))) != 0:
        raise SandboxError(f"seccomp filter: no_new_privs could not be set: {_errno_text()}")
    instructions = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(instructions))
    result = libc.syscall(
        ctypes.c_long(_ARCHES[arch].seccomp_nr),
        ctypes.c_ulong(_SECCOMP_SET_MODE_FILTER),
        ctypes.c_ulong(_SECCOMP_FILTER_FLAG_TSYNC),
        ctypes.byref(fprog),
    )
    if result > 0:
        raise SandboxError(f"seccomp filter could not be installed: thread {result} refused it")
    if result != 0:
        raise SandboxError(f"seccomp filter could not be installed: {_errno_text()}")


def _errno_text() -> str:
    code = ctypes.get_errno()
    return f"{errno.errorcode.get(code, str(code))} ({os.strerror(code)})"
