"""A broker started as its own process (``openenv-broker start``), and what /proc says of it.

:func:`broker_process` starts ``python -m broker start`` (what the ``openenv-broker`` script
runs) on ipc sockets in a fresh 0700 folder, reads the two addresses it prints, waits for its
local workers and yields a :class:`BrokerProcess`. On the way out, exceptions and Ctrl-C
included, it stops the broker with SIGTERM (SIGKILL after :data:`STOP_TIMEOUT`), kills any
worker that outlived it and removes the folder. :func:`status` asks a broker for its status over
a raw DEALER, without opening a client session (which would count in ``sessions.live``).
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from broker.procfs import started
from openenv_zmq import sockets
from openenv_zmq.protocol import Message, Op, decode, encode

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
STATUS_TIMEOUT = 10.0
READY_LINE = re.compile(r"clients connect to (\S+)")
WORKERS_LINE = re.compile(r"workers join at (\S+)")
STARTED = re.compile(r"clients connect to \S+\s.*workers join at \S+\s", re.DOTALL)


class BrokerGone(RuntimeError):
    """The broker process ended, or stopped answering STATUS."""


# ---------------------------------------------------------------------------- /proc


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (read from /proc/*/stat: no psutil needed)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def rss_mib(pid: int) -> float:
    """The resident memory of ``pid`` (``VmRSS`` of /proc/PID/status) in MiB; NaN if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def age_s(pid: int) -> float:
    """Seconds since ``pid`` started (0 if it is gone)."""
    ticks = started(pid)
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except OSError:
        return 0.0
    return 0.0 if ticks is None else uptime - ticks / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- status


def status(address: str, timeout: float = STATUS_TIMEOUT) -> dict[str, Any]:
    """The broker's status (as ``BatchClient.status()`` returns it), asked over a DEALER of
    its own with no client session. Raises :class:`BrokerGone` when no answer comes."""
    socket: zmq.Socket[bytes] = sockets.configure(zmq.Context.instance().socket(zmq.DEALER))
    try:
        socket.connect(address)
        socket.send_multipart(encode(Message(Op.STATUS, request_id=1)))
        if not socket.poll(int(timeout * 1000)):
            raise BrokerGone(f"the broker at {address} did not answer STATUS in {timeout:g} s")
        answer = decode(socket.recv_multipart())
    finally:
        socket.close(linger=0)
    result: dict[str, Any] = answer.meta["status"]
    return result


def live_workers(info: dict[str, Any]) -> list[dict[str, Any]]:
    return [w for w in info["workers"] if w["state"] == "READY"]


# ---------------------------------------------------------------------------- the broker


@dataclass
class BrokerProcess:
    """A running ``openenv-broker start`` and the addresses it bound."""

    process: subprocess.Popen[bytes]
    frontend: str
    backend: str
    log: Path
    seen: dict[int, int | None] = field(default_factory=dict)
    """Every descendant process seen (pid: start ticks), killed at the end if it outlived the
    broker."""

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def rss_mib(self) -> float:
        return rss_mib(self.pid)

    def status(self) -> dict[str, Any]:
        if not self.running():
            raise BrokerGone(f"the broker exited with code {self.process.returncode}")
        return status(self.frontend)

    def children(self) -> set[int]:
        pids = descendants(self.pid)
        self.seen.update((pid, started(pid)) for pid in pids if pid not in self.seen)
        return pids

    def workers(self) -> list[dict[str, Any]]:
        """The live workers that are this broker's own processes (a peer's READY may name any
        pid: only processes below the broker count)."""
        own = self.children()
        return [w for w in live_workers(self.status()) if w["pid"] in own]

    def wait_for_workers(self, count: int, timeout: float = START_TIMEOUT) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            workers = self.workers()
            if len(workers) >= count:
                return workers
            if time.monotonic() > deadline:
                raise BrokerGone(f"{len(workers)} of {count} workers joined in {timeout:g} s")
            time.sleep(0.05)


def _child_env() -> dict[str, str]:
    """This checkout first on the path of every process started (an installed copy of the
    package may be another checkout's)."""
    paths = [str(REPO_ROOT), str(REPO_ROOT / "envs")]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def python(*args: str, **popen: Any) -> subprocess.Popen[bytes]:
    """``python ARGS`` run from the repository with this checkout on its path."""
    return subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, env=_child_env(), **popen)


def read_until(process: subprocess.Popen[bytes], pattern: re.Pattern[str], timeout: float) -> str:
    """Read ``process``'s stdout until its text matches ``pattern`` and return that text;
    raises :class:`TimeoutError` (with what was read) when it has not within ``timeout``
    seconds or the output ends first."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    output = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            text = output.decode(errors="replace")
            if pattern.search(text):
                return text
            if not selector.select(max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            output += chunk
    raise TimeoutError(f"{pattern.pattern!r} not seen in the output {output!r}")


def read_addresses(process: subprocess.Popen[bytes], timeout: float) -> tuple[str, str]:
    """The client and worker addresses a starting broker prints; raises :class:`BrokerGone`
    when it has not printed both within ``timeout`` seconds."""
    try:
        text = read_until(process, STARTED, timeout)
    except TimeoutError as exc:
        raise BrokerGone(f"the broker did not print its addresses: {exc}") from None
    front, back = READY_LINE.search(text), WORKERS_LINE.search(text)
    assert front is not None and back is not None
    return front.group(1), back.group(1)


@contextlib.contextmanager
def broker_process(
    workers: int = 2,
    env: str = "echo",
    extra: tuple[str, ...] = (),
) -> Iterator[BrokerProcess]:
    """``openenv-broker start --workers N --env ENV EXTRA...`` on ipc sockets in a fresh 0700
    folder, its log (stderr) in a file there; yields it once its workers have joined, and
    stops it and every process it started on the way out."""
    folder = Path(tempfile.mkdtemp(prefix="openenv-faults-"))
    log = folder / "broker.log"
    args = ["-m", "broker", "start", "--workers", str(workers), "--env", env, *extra]
    args += ["--bind", f"ipc://{folder}/front.sock", "--worker-bind", f"ipc://{folder}/back.sock"]
    try:
        with log.open("wb") as stderr:
            process = python(*args, stdout=subprocess.PIPE, stderr=stderr, bufsize=0)
        broker: BrokerProcess | None = None
        try:
            frontend, backend = read_addresses(process, START_TIMEOUT)
            broker = BrokerProcess(process, frontend, backend, log)
            broker.wait_for_workers(workers)
            yield broker
        finally:
            _stop(process, broker.seen if broker else {})
    except BrokerGone as exc:
        raise BrokerGone(f"{exc}\n--- broker log ---\n{_tail(log)}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _stop(process: subprocess.Popen[bytes], seen: dict[int, int | None]) -> None:
    if process.poll() is None:
        seen.update((pid, started(pid)) for pid in descendants(process.pid) if pid not in seen)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()

    # Local workers leave when their broker does (within 0.5 s); whatever did not is killed,
    # if it is still the very process seen (same pid, same start time).
    def left() -> list[int]:
        return [pid for pid, ticks in seen.items() if alive(pid) and started(pid) == ticks]

    deadline = time.monotonic() + 5.0
    while left() and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
