"""The zygote: started by exec with an empty environment, it imports the session modules once and
forks a session process per request, so a session starts in milliseconds with them loaded.

Its control socket (``SOCK_SEQPACKET``, one msgpack map per message) is the worker's only way in:

- ``{"op": "spawn", "factory": F}`` with one descriptor (the session's end of a socketpair)
  → ``{"pid": P}``; the session then says hello on that socket;
- ``{"op": "load", "factory": F}`` → ``{}`` or ``{"error": E}``: import a factory ahead of use;
- ``{"op": "status", "pid": P}`` → ``{"status": S}``: how a session process ended.

The worker sends its configuration first (JSON, read by the bootstrap in
:mod:`.contained`); the zygote answers it with its layers. When the control socket closes, the
zygote exits, and its sessions die with it (their parent-death signal).
"""

from __future__ import annotations

import gc
import os
import select
import shutil
import signal
import socket
import sys
import time
from collections import OrderedDict
from typing import Any

import msgpack

from openenv_zmq.sandbox import child
from openenv_zmq.sandbox.cgroups import join_pids_cgroup
from openenv_zmq.sandbox.frames import FrameReader
from openenv_zmq.sandbox.hardening import die_with_parent
from openenv_zmq.sandbox.layers import Layer, SandboxPolicy, SessionLimits
from openenv_zmq.sandbox.namespaces import enter_empty_netns
from openenv_zmq.sandbox.sessions import load_factory

_MAX_MESSAGE = 2**20
_KEPT_STATUSES = 4096
_STATUS_WAIT_S = 0.2


def describe_status(status: int) -> str:
    """``waitpid``'s status in words: how a session process ended."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        hint = {"SIGKILL": " (a kill, or the kernel out of memory)", "SIGXCPU": " (its CPU limit)"}
        return f"killed by {name}{hint.get(name, '')}"
    if os.WIFEXITED(status):
        return f"exited with code {os.WEXITSTATUS(status)}"
    return f"ended with status {status}"


class Zygote:
    def __init__(self, control: socket.socket, config: dict[str, Any]) -> None:
        self.control = control
        self.parent_pid: int = config["parent_pid"]
        self.workdir: str = config["workdir"]
        self.policy = SandboxPolicy(
            required=frozenset(Layer(name) for name in config["required"]),
            limits=SessionLimits(**config["limits"]),
        )
        self.loaded: set[str] = set()
        self.layers: dict[str, str] = {}
        self.statuses: OrderedDict[int, str] = OrderedDict()

    def load(self, factory: str) -> None:
        load_factory(factory)
        self.loaded.add(factory)

    def set_up(self, preload: list[str]) -> dict[str, Any]:
        """Imports, then the layers every session shares, then a probe of the per-process ones."""
        for factory in preload:
            self.load(factory)
        # Objects that exist now are shared with every session; frozen, the collector never
        # touches (and so never copies) their pages.
        gc.collect()
        gc.freeze()
        self.layers[Layer.NETNS] = enter_empty_netns()
        state, cgroup = join_pids_cgroup(f"openenv-zmq-{os.getpid()}", self.policy.limits.pids_max)
        self.layers[Layer.PIDS_CGROUP] = state
        probe = self._fork(None)
        self.layers.update(probe.get("layers", {}))
        if "error" in probe:
            return {"error": probe["error"], "layers": self.layers, "cgroup": cgroup}
        return {"layers": self.layers, "cgroup": cgroup}

    def _fork(self, factory: str | None, channel: socket.socket | None = None) -> dict[str, Any]:
        """Fork a session (``factory``) on ``channel``, or a probe that reports its layers."""
        probe_end = None
        if channel is None:
            channel, probe_end = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            self.control.close()
            if probe_end is not None:
                probe_end.close()
            if factory is None:
                child.probe_layers(channel, os.getppid(), self.workdir, self.policy)
            child.run_session(
                channel, os.getppid(), factory, self.workdir, self.policy, self.layers
            )
        channel.close()
        if probe_end is None:
            return {"pid": pid}
        reader = FrameReader()
        with probe_end:
            while (frame := reader.next_frame()) is None:
                data = probe_end.recv(65536)
                if not data:
                    frame = {"error": "the probe died before reporting"}
                    break
                reader.feed(data)
        os.waitpid(pid, 0)
        shutil.rmtree(os.path.join(self.workdir, str(pid)), ignore_errors=True)
        return frame

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.statuses[pid] = describe_status(status)
            while len(self.statuses) > _KEPT_STATUSES:
                self.statuses.popitem(last=False)

    def status(self, pid: int) -> str:
        deadline = time.monotonic() + _STATUS_WAIT_S
        while True:
            self.reap()
            if pid in self.statuses:
                return self.statuses.pop(pid)
            if time.monotonic() > deadline:
                return "ended (its exit status is unknown)"
            time.sleep(0.005)

    def answer(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        op = request.get("op")
        factory = request.get("factory")
        if op == "spawn" and isinstance(factory, str) and len(fds) == 1:
            if factory not in self.loaded:
                self.load(factory)
            return self._fork(factory, socket.socket(fileno=fds.pop()))
        if op == "load" and isinstance(factory, str):
            self.load(factory)
            return {}
        if op == "status" and isinstance(request.get("pid"), int):
            return {"status": self.status(request["pid"])}
        return {"error": f"not a zygote request: {request!r}"}

    def serve(self) -> None:
        while True:
            readable, _, _ = select.select([self.control], [], [], 1.0)
            self.reap()
            if not readable:
                continue
            data, fds, _, _ = socket.recv_fds(self.control, _MAX_MESSAGE, 1)
            if not data:
                return
            try:
                reply = self.answer(msgpack.unpackb(data), fds)
            except Exception as exc:  # one bad request must not end the zygote
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                for fd in fds:
                    os.close(fd)
            self.control.send(msgpack.packb(reply))


def main(control: socket.socket, config: dict[str, Any]) -> None:
    """Run by the bootstrap of :mod:`.contained` with the worker's configuration."""
    die_with_parent(config["parent_pid"])
    # Started with no environment at all, Python still sets LC_CTYPE itself (PEP 538): sessions
    # get none, not even that.
    os.environ.clear()
    zygote = Zygote(control, config)
    try:
        hello = zygote.set_up(config["preload"])
    except Exception as exc:  # the worker reports it
        hello = {"error": f"{type(exc).__name__}: {exc}", "layers": zygote.layers}
    control.send(msgpack.packb(hello))
    if "error" not in hello:
        zygote.serve()
    sys.exit(0)
