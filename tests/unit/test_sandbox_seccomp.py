"""The seccomp filter's program, run by a small classic-BPF interpreter on made-up calls.

The interpreter knows only the instructions the builder emits and fails on any other; the
expected actions and ``AUDIT_ARCH`` values are the kernel's, written out again here rather than
taken from the module under test.
"""

from __future__ import annotations

import errno
import re
import struct
from collections.abc import Mapping
from pathlib import Path

import pytest

from openenv_zmq.errors import SandboxError
from openenv_zmq.sandbox.seccomp import (
    AARCH64_SYSCALLS,
    FILTERED_SYSCALLS,
    X86_64_SYSCALLS,
    Instruction,
    Label,
    assemble,
    build_filter,
)

LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
ALLOW = 0x7FFF0000
KILL_PROCESS = 0x80000000
EPERM = 0x00050000 | errno.EPERM
ENOSYS = 0x00050000 | errno.ENOSYS

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
FOREIGN_ARCHES = {"i386": 0x40000003, "arm": 0x40000028}
TABLES: Mapping[str, Mapping[str, int]] = {"x86_64": X86_64_SYSCALLS, "aarch64": AARCH64_SYSCALLS}
ARCHES = sorted(TABLES)
# Numbers of calls the interpreter needs, per arch
ALWAYS_ALLOWED = {
    "x86_64": {"read": 0, "write": 1, "mmap": 9, "brk": 12, "futex": 202, "getrandom": 318},
    "aarch64": {"read": 63, "write": 64, "mmap": 222, "brk": 214, "futex": 98, "getrandom": 278},
}
HEADERS = {
    "x86_64": Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
    "aarch64": Path("/usr/include/asm-generic/unistd.h"),
}

OWN_PID = 4242
CLONE_THREAD = 0x00010000
PTHREAD_CREATE_FLAGS = 0x003D0F00  # glibc's: CLONE_VM | FS | FILES | SIGHAND | THREAD | ...
FORK_FLAGS = 0x01200011  # glibc's fork: CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
RETURN = Instruction(RET_K, 0)
CONDITIONAL = {"clone", "clone3", "kill", "tkill", "tgkill", "prlimit64"}


def run(program: bytes, nr: int, arch: int, *args: int) -> int:
    """The action ``program`` returns for the call ``nr(*args)`` made under ``arch``."""
    padded = [arg & 0xFFFF_FFFF_FFFF_FFFF for arg in args] + [0] * (6 - len(args))
    data = struct.pack("<iIQ6Q", nr, arch, 0x1000, *padded)
    instructions = list(struct.iter_unpack("<HBBI", program))
    pc = accumulator = 0
    while True:
        assert pc < len(instructions), "the program runs off its end"
        code, jt, jf, k = instructions[pc]
        if code == RET_K:
            return int(k)
        if code == LD_W_ABS:
            (accumulator,) = struct.unpack_from("<I", data, k)
            pc += 1
        elif code in (JEQ_K, JGE_K, JSET_K):
            taken = {JEQ_K: accumulator == k, JGE_K: accumulator >= k, JSET_K: accumulator & k}
            pc += 1 + (jt if taken[code] else jf)
        else:
            raise AssertionError(f"instruction {pc} has opcode {code:#x}, unknown here")


def call(arch: str, name: str, *args: int) -> int:
    """The action the filter for ``arch`` and pid ``OWN_PID`` returns for ``name(*args)``."""
    return run(build_filter(arch, OWN_PID), TABLES[arch][name], AUDIT_ARCH[arch], *args)


def listed_names() -> list[str]:
    return [name for group in FILTERED_SYSCALLS.values() for name in group]


@pytest.mark.parametrize("arch", ARCHES)
def test_filter_kills_calls_made_under_another_arch(arch: str) -> None:
    program = build_filter(arch, OWN_PID)
    read = ALWAYS_ALLOWED[arch]["read"]
    for other in [*FOREIGN_ARCHES.values(), *(AUDIT_ARCH[a] for a in ARCHES if a != arch)]:
        assert run(program, read, other) == KILL_PROCESS


@pytest.mark.parametrize("arch", ARCHES)
def test_filter_refuses_every_unconditionally_listed_call_with_eperm(arch: str) -> None:
    names = [name for name in listed_names() if name in TABLES[arch]]
    for name in set(names) - CONDITIONAL:
        assert call(arch, name) == EPERM, name
        assert call(arch, name, OWN_PID, 1, 2) == EPERM, name


@pytest.mark.parametrize("arch", ARCHES)
def test_filter_allows_every_call_it_does_not_list(arch: str) -> None:
    program = build_filter(arch, OWN_PID)
    listed = set(TABLES[arch].values())
    for nr in range(600):
        if nr not in listed:
            assert run(program, nr, AUDIT_ARCH[arch], 0, 0) == ALLOW, nr
    for name, nr in ALWAYS_ALLOWED[arch].items():
        assert nr not in listed, name


def test_filter_refuses_x32_calls_on_x86_64() -> None:
    program = build_filter("x86_64", OWN_PID)
    x32 = 0x40000000
    for nr in (x32, x32 + 1, x32 + 520):  # x32's read, write and execve
        assert run(program, nr, AUDIT_ARCH["x86_64"]) == EPERM


@pytest.mark.parametrize("arch", ARCHES)
def test_clone_starts_threads_but_not_processes(arch: str) -> None:
    assert call(arch, "clone", PTHREAD_CREATE_FLAGS) == ALLOW
    assert call(arch, "clone", CLONE_THREAD) == ALLOW
    assert call(arch, "clone", FORK_FLAGS) == EPERM
    assert call(arch, "clone", 0) == EPERM
    assert call(arch, "clone", PTHREAD_CREATE_FLAGS | CLONE_NEWUSER) == EPERM
    assert call(arch, "clone", PTHREAD_CREATE_FLAGS | CLONE_NEWNET) == EPERM
    assert call(arch, "clone3", 0x7FFF_0000_1000, 88) == ENOSYS


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("name", ["kill", "tkill", "tgkill"])
def test_signals_go_only_to_the_process_itself(arch: str, name: str) -> None:
    assert call(arch, name, OWN_PID, 0) == ALLOW
    assert call(arch, name, OWN_PID, 15) == ALLOW
    for pid in (0, -1, OWN_PID + 1, 1, -OWN_PID, OWN_PID | 1 << 32):
        assert call(arch, name, pid, 9) == EPERM, pid


@pytest.mark.parametrize("arch", ARCHES)
def test_limits_are_set_only_on_the_process_itself(arch: str) -> None:
    assert call(arch, "prlimit64", 0, 7, 0x1000, 0) == ALLOW
    assert call(arch, "prlimit64", OWN_PID, 7, 0x1000, 0) == ALLOW
    for pid in (1, OWN_PID + 1, -1, 1 << 32):
        assert call(arch, "prlimit64", pid, 7, 0x1000, 0) == EPERM, pid


@pytest.mark.parametrize("arch", ARCHES)
def test_program_is_small_and_every_jump_lands_inside_it(arch: str) -> None:
    program = build_filter(arch, OWN_PID)
    instructions = list(struct.iter_unpack("<HBBI", program))
    assert len(program) == 8 * len(instructions)
    assert len(instructions) < 4096
    for pc, (code, jt, jf, _) in enumerate(instructions):
        assert code in (LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K), pc
        if code in (JEQ_K, JGE_K, JSET_K):
            assert pc + 1 + max(jt, jf) < len(instructions), pc
        else:
            assert jt == jf == 0, pc
    assert instructions[-1][0] == RET_K


@pytest.mark.parametrize("arch", ARCHES)
def test_tables_list_every_filtered_call_the_arch_has(arch: str) -> None:
    names = listed_names()
    assert len(names) == len(set(names))
    missing = {"x86_64": set(), "aarch64": {"fork", "vfork", "iopl", "ioperm"}}[arch]
    assert set(TABLES[arch]) == set(names) - missing
    assert len(set(TABLES[arch].values())) == len(TABLES[arch])


@pytest.mark.parametrize("arch", ARCHES)
def test_tables_agree_with_this_machines_kernel_headers(arch: str) -> None:
    header = HEADERS[arch]
    if not header.exists():
        pytest.skip(f"{header} is not installed")
    defined = {
        match[1]: int(match[2])
        for match in re.finditer(r"^#define __NR(?:3264)?_(\w+)\s+(\d+)$", header.read_text(), re.M)
    }
    compared = {name: nr for name, nr in TABLES[arch].items() if name in defined}
    assert compared == {name: defined[name] for name in compared}
    # newer than the headers: numbered alike on every arch since Linux 5.1 (pidfd_send_signal)
    assert all(nr >= 424 for name, nr in TABLES[arch].items() if name not in defined)


def test_filter_refuses_unsupported_arches_and_pids() -> None:
    with pytest.raises(SandboxError, match="seccomp filter: architecture riscv64 not supported"):
        build_filter("riscv64", OWN_PID)
    for pid in (0, -5, 2**31):
        with pytest.raises(ValueError, match="positive pid"):
            build_filter("x86_64", pid)


def test_filter_bakes_in_the_pid_it_was_built_for() -> None:
    program = build_filter("x86_64", 77)
    assert run(program, X86_64_SYSCALLS["kill"], AUDIT_ARCH["x86_64"], 77, 0) == ALLOW
    assert run(program, X86_64_SYSCALLS["kill"], AUDIT_ARCH["x86_64"], OWN_PID, 0) == EPERM


def test_assemble_resolves_labels_to_forward_offsets() -> None:
    program = assemble(
        [
            Instruction(LD_W_ABS, 0),
            Instruction(JEQ_K, 5, "yes", "no"),
            Label("no"),
            Instruction(RET_K, 1),
            Label("yes"),
            Instruction(RET_K, 2),
        ]
    )
    assert list(struct.iter_unpack("<HBBI", program)) == [
        (LD_W_ABS, 0, 0, 0),
        (JEQ_K, 1, 0, 5),
        (RET_K, 0, 0, 1),
        (RET_K, 0, 0, 2),
    ]
    assert run(program, 5, 0) == 2
    assert run(program, 4, 0) == 1


@pytest.mark.parametrize(
    ("program", "message"),
    [
        (
            [Instruction(JEQ_K, 0, "far"), *[Instruction(RET_K, 0)] * 256, Label("far"), RETURN],
            "spans 256",
        ),
        ([Instruction(JEQ_K, 0, "end"), RETURN, Label("end")], "lands past the end"),
        ([Label("back"), RETURN, Instruction(JEQ_K, 0, "back"), RETURN], "spans -2"),
        ([Instruction(JEQ_K, 0, "nowhere"), RETURN], "unknown label 'nowhere'"),
        ([Label("twice"), Label("twice")], "defined twice"),
        ([RETURN] * 4097, "over BPF's 4096"),
    ],
)
def test_assemble_refuses_what_the_kernel_would(
    program: list[Instruction | Label], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        assemble(program)
