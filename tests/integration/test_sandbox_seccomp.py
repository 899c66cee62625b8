"""The seccomp filter in a real kernel: a forked child installs it, tries a call, and reports.

Each test forks one child; the child installs the filter, runs one probe and writes what came of
it to a pipe as JSON, then leaves with ``os._exit``. The parent always reaps it, killing it first
if it does not answer in time, so no test leaves a process behind.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import json
import mmap
import multiprocessing
import os
import platform
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from openenv_zmq.sandbox.seccomp import install

pytestmark = pytest.mark.integration

CHILD_DEADLINE_S = 20.0
CLONE_NEWUSER = 0x10000000
PTRACE_PEEKDATA = 2
HOSTNAME = Path("/etc/hostname")


@dataclass(frozen=True)
class Child:
    exit_code: int
    """As ``os.waitstatus_to_exitcode`` gives it: minus the signal that killed the child."""
    report: Any
    """``{"returned": ...}`` or ``{"raised": ...}``; ``None`` if the child wrote nothing."""


def run_filtered(probe: Callable[[], object]) -> Child:
    """Fork a child that installs the filter and then runs ``probe``."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            try:
                install()
                report: dict[str, object] = {"returned": probe()}
            except BaseException as exc:
                report = {"raised": f"{type(exc).__name__}: {exc}"}
            os.write(write_fd, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        output = read_until_eof(read_fd, time.monotonic() + CHILD_DEADLINE_S)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    return Child(os.waitstatus_to_exitcode(status), json.loads(output) if output else None)


def read_until_eof(fd: int, deadline: float) -> bytes:
    chunks = []
    while chunk := read_before(fd, deadline):
        chunks.append(chunk)
    return b"".join(chunks)


def read_before(fd: int, deadline: float) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
        raise TimeoutError(f"the filtered child did not finish in {CHILD_DEADLINE_S} s")
    return os.read(fd, 65536)


def errno_of(action: Callable[[], object]) -> int | None:
    """The errno ``action`` fails with, ``None`` if it succeeds."""
    try:
        action()
    except OSError as exc:
        return exc.errno
    return None


def libc_call(name: str, *args: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*map(ctypes.c_long, args)) == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def fork_and_reap() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def start_fork_process() -> None:
    process = multiprocessing.get_context("fork").Process(target=os.getpid)
    process.start()
    process.join()


def open_socket() -> None:
    socket.socket().close()


def open_socketpair() -> None:
    for end in socket.socketpair():
        end.close()


REFUSED: dict[str, Callable[[], object]] = {
    "socket": open_socket,
    "socketpair": open_socketpair,
    "execv": lambda: os.execv("/bin/true", ["true"]),
    "fork": fork_and_reap,
    "subprocess": lambda: subprocess.run(["true"], check=True),
    "multiprocessing fork": start_fork_process,
    "signal to the parent": lambda: os.kill(os.getppid(), 0),
    "signal to the own process group": lambda: os.kill(0, 0),
    "unshare": lambda: libc_call("unshare", CLONE_NEWUSER),
    "ptrace": lambda: libc_call("ptrace", PTRACE_PEEKDATA, os.getppid(), 0, 0),
    "limits of the parent": lambda: resource.prlimit(os.getppid(), resource.RLIMIT_NOFILE),
    "setuid": lambda: os.setuid(os.getuid()),
}


@pytest.mark.parametrize("name", REFUSED)
def test_filter_refuses_with_eperm(name: str) -> None:
    child = run_filtered(lambda: errno_of(REFUSED[name]))
    assert child == Child(0, {"returned": errno.EPERM})


def test_filter_is_installed_with_no_new_privs() -> None:
    def status() -> list[str]:
        lines = Path("/proc/self/status").read_text().splitlines()
        return [line for line in lines if line.startswith(("Seccomp:", "NoNewPrivs:"))]

    assert run_filtered(status) == Child(0, {"returned": ["NoNewPrivs:\t1", "Seccomp:\t2"]})


def signal_self() -> list[int]:
    received: list[int] = []
    signal.signal(signal.SIGUSR1, lambda signum, _: received.append(signum))
    os.kill(os.getpid(), 0)
    os.kill(os.getpid(), signal.SIGUSR1)
    signal.pthread_kill(threading.get_ident(), 0)  # tgkill to itself
    return received


def start_thread() -> str:
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(threading.current_thread().name))
    thread.start()
    thread.join()
    return result[0]


def import_json_afresh() -> str:
    for name in [name for name in sys.modules if name == "json" or name.startswith("json.")]:
        del sys.modules[name]
    return str(importlib.import_module("json").dumps([1]))


def set_own_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft - 1, hard))
    return resource.prlimit(os.getpid(), resource.RLIMIT_NOFILE)[0] - soft


def through_a_pipe() -> str:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"sent")
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        return reader.read().decode()


def test_filter_leaves_the_interpreter_working(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("kept")
    probes: dict[str, Callable[[], object]] = {
        "signal self": signal_self,
        "thread": start_thread,
        "json": import_json_afresh,
        "file": (tmp_path / "data.txt").read_text,
        "hostname": lambda: HOSTNAME.exists() and HOSTNAME.read_text(),
        "sleep": lambda: time.sleep(0.01),
        "random": lambda: len(os.urandom(8)),
        "own limit": set_own_limit,
        "pipe": through_a_pipe,
    }
    child = run_filtered(lambda: {name: probe() for name, probe in probes.items()})
    assert child.exit_code == 0
    assert "raised" not in child.report, child.report
    returned = child.report["returned"]
    assert returned["signal self"] == [signal.SIGUSR1]
    assert returned["thread"].startswith("Thread-")
    assert returned["json"] == "[1]"
    assert returned["file"] == "kept"
    assert returned["hostname"] == (HOSTNAME.exists() and HOSTNAME.read_text())
    assert returned["pipe"] == "sent"
    assert returned["own limit"] == -1


def call_i386_getpid() -> int:
    """getpid through ``int 0x80``, the 32-bit entry an x86_64 process can still reach."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(b"\xb8\x14\x00\x00\x00\xcd\x80\xc3")  # mov eax, 20 (i386 getpid); int 0x80; ret
    function = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    return int(function())


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64's 32-bit entry")
def test_filter_kills_a_call_made_under_another_arch() -> None:
    child = run_filtered(call_i386_getpid)
    if child.exit_code == -signal.SIGSEGV:
        pytest.skip("this kernel has no 32-bit syscall entry (no IA32 emulation)")
    assert child == Child(-signal.SIGSYS, None)
