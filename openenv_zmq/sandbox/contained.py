"""The default session host: a zygote per process, a hardened process per session.

The zygote is started by exec (never forked from a worker that may hold sockets and threads)
with an empty environment and only its control socket. The worker talks to each session over
its own socketpair and holds a pidfd for it, so a kill at the deadline can never hit a process
that merely reused the pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import msgpack

from openenv_zmq.errors import SandboxError, SessionCrashed
from openenv_zmq.sandbox.cgroups import remove_cgroup
from openenv_zmq.sandbox.frames import RECV_BYTES, FrameError, FrameReader, encode_frame
from openenv_zmq.sandbox.layers import SandboxPolicy, check_required
from openenv_zmq.sandbox.sessions import Reply, Request, Session, SessionHost, SessionTimedOut

log = logging.getLogger(__name__)

_BOOTSTRAP = (
    "import json, socket, sys\n"
    "control = socket.socket(fileno=int(sys.argv[1]))\n"
    "config = json.loads(control.recv(1 << 20))\n"
    "sys.path[:] = config['sys_path']\n"
    "from openenv_zmq.sandbox.zygote import main\n"
    "main(control, config)\n"
)
ZYGOTE_START_TIMEOUT_S = 120.0
"""Generous: the zygote imports smolagents (about a second) on a machine that may be busy."""
HELLO_TIMEOUT_S = 30.0
_MAX_CONTROL_MESSAGE = 2**20


class ContainedHost(SessionHost):
    """Starts its zygote at construction; a required layer that cannot be had is a
    :class:`SandboxError` then, before any session exists."""

    def __init__(self, policy: SandboxPolicy | None = None, preload: Sequence[str] = ()) -> None:
        self.policy = policy or SandboxPolicy()
        self._lock = threading.Lock()
        self._workdir = tempfile.mkdtemp(prefix="openenv-zmq-sessions-")
        # Sessions (another uid when we are root) must reach their own folders, never list ours.
        os.chmod(self._workdir, 0o711)
        self._control, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with zygote_end:
            self._zygote = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOTSTRAP, str(zygote_end.fileno())],
                env={},
                cwd=self._workdir,
                pass_fds=(zygote_end.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                # Out of the worker's process group: a terminal's Ctrl-C is the worker's to
                # handle; the zygote and its sessions end with the worker (parent-death signal).
                process_group=0,
            )
        self._cgroup = ""
        self._layers: dict[str, str] = {}
        self._sessions: weakref.WeakSet[ContainedSession] = weakref.WeakSet()
        try:
            self._start(preload)
        except BaseException:
            self.close()
            raise

    def _start(self, preload: Sequence[str]) -> None:
        config = {
            "sys_path": sys.path,
            "parent_pid": os.getpid(),
            "workdir": self._workdir,
            "preload": list(preload),
            "required": sorted(self.policy.required),
            "limits": asdict(self.policy.limits),
        }
        self._control.sendall(json.dumps(config).encode())
        hello = self._receive(ZYGOTE_START_TIMEOUT_S, "start")
        self._layers = dict(hello.get("layers", {}))
        self._cgroup = hello.get("cgroup", "")
        if "error" in hello:
            raise SandboxError(f"the sandbox's zygote could not start: {hello['error']}")
        check_required(self.policy, self._layers)
        log.info("sandbox zygote %d: %s", self._zygote.pid, self._layers)

    def _receive(self, timeout_s: float | None, what: str) -> dict[str, Any]:
        self._control.settimeout(timeout_s)
        try:
            data = self._control.recv(_MAX_CONTROL_MESSAGE)
        except TimeoutError:
            raise SandboxError(f"the sandbox's zygote did not answer ({what}) in time") from None
        except OSError as exc:
            raise SandboxError(f"the sandbox's zygote is gone ({what}): {exc}") from None
        if not data:
            raise SandboxError(f"the sandbox's zygote is gone ({what})")
        reply: dict[str, Any] = msgpack.unpackb(data)
        return reply

    def _ask(self, request: dict[str, Any], fds: Sequence[int] = ()) -> dict[str, Any]:
        with self._lock:
            try:
                socket.send_fds(self._control, [msgpack.packb(request)], list(fds))
            except OSError as exc:
                raise SandboxError(f"the sandbox's zygote is gone: {exc}") from None
            return self._receive(HELLO_TIMEOUT_S, str(request.get("op")))

    def open(self, factory: str) -> Session:
        channel, session_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with session_end:
            reply = self._ask({"op": "spawn", "factory": factory}, [session_end.fileno()])
        if "error" in reply:
            channel.close()
            raise SandboxError(f"no session for {factory!r}: {reply['error']}")
        pid: int = reply["pid"]
        # Opened before the hello is read: a process that says hello on this channel was alive
        # all along, so this pidfd is the session's and no later process's.
        pidfd = os.pidfd_open(pid)
        session = ContainedSession(self, channel, pid, pidfd)
        self._sessions.add(session)
        hello = session.hello()
        if "error" in hello:
            session.close()
            raise SandboxError(f"the session process could not start: {hello['error']}")
        return session

    async def open_async(self, factory: str) -> Session:
        return await asyncio.to_thread(self.open, factory)

    def exit_status(self, pid: int) -> str:
        try:
            return str(self._ask({"op": "status", "pid": pid}).get("status", "ended"))
        except SandboxError as exc:
            return f"ended ({exc})"

    def session_folder(self, pid: int) -> str:
        return os.path.join(self._workdir, str(pid))

    @property
    def layers(self) -> Mapping[str, str]:
        return self._layers

    @property
    def zygote_pid(self) -> int:
        return self._zygote.pid

    def close(self) -> None:
        for session in list(self._sessions):
            session.close()
        with self._lock:
            self._control.close()
        try:
            self._zygote.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._zygote.kill()
            self._zygote.wait()
        if self._cgroup:
            remove_cgroup(self._cgroup)
        shutil.rmtree(self._workdir, ignore_errors=True)


class ContainedSession(Session):
    """A session process reached over its own socketpair.

    Used from an event loop, the channel stays registered with that loop's selector from the
    first :meth:`call_async` until :meth:`close`: each call then costs one ``send`` and one
    ``recv``, where ``loop.sock_recv`` adds a failed ``recv`` and two ``epoll_ctl`` per call.
    """

    def __init__(self, host: ContainedHost, channel: socket.socket, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._host = host
        self._channel = channel
        self._pidfd = pidfd
        self._reader = FrameReader()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop whose selector watches the channel, if one does."""
        self._waiter: asyncio.Future[Reply] | None = None
        """The reply the call in flight awaits."""
        self._broken: Exception | None = None
        """Why the channel is useless, found while no call was waiting."""

    def hello(self) -> dict[str, Any]:
        try:
            return self._read(time.monotonic() + HELLO_TIMEOUT_S)
        except (TimeoutError, FrameError, ConnectionError) as exc:
            return {"error": f"no hello: {exc or type(exc).__name__}"}

    def _read(self, deadline: float | None) -> dict[str, Any]:
        while (frame := self._reader.next_frame()) is None:
            if deadline is not None:
                self._channel.settimeout(max(deadline - time.monotonic(), 1e-3))
            data = self._channel.recv(RECV_BYTES)
            if not data:
                raise ConnectionResetError("the session process closed its channel")
            self._reader.feed(data)
        return frame

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxError("the session is closed")

    def call(self, request: Request, timeout_s: float | None) -> Reply:
        self._check_open()
        self._leave_loop()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            if self._broken is not None:
                raise self._broken
            self._channel.settimeout(timeout_s)
            self._channel.sendall(encode_frame(request))
            reply = self._read(deadline)
            if self._reader.buffered:
                self._broken = FrameError("more than one reply to one request")
            return self._answer(reply)
        except TimeoutError:
            self.close()
            raise SessionTimedOut from None
        except (ConnectionError, FrameError) as exc:
            raise self._crashed(exc) from None

    async def call_async(self, request: Request, timeout_s: float | None) -> Reply:
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        # Waiting before the request is out: the reply may be read before this coroutine runs
        # again after a send that had to wait for room.
        waiter = self._waiter = loop.create_future()
        timer = None
        try:
            if self._broken is not None:
                raise self._broken
            if self._loop is not loop:
                self._serve_on(loop)
            await self._send(loop, encode_frame(request), deadline)
            if deadline is not None:
                timer = loop.call_at(deadline, _expire, waiter)
            reply = await waiter
        except TimeoutError:
            self.close()
            raise SessionTimedOut from None
        except (ConnectionError, FrameError) as exc:
            raise await asyncio.to_thread(self._crashed, exc) from None
        except asyncio.CancelledError:
            self.close()  # the request may still be served: its reply would answer the next
            raise
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
            if not waiter.done():
                waiter.cancel()
            elif not waiter.cancelled():
                waiter.exception()  # retrieved: a failure while sending was raised instead
        return self._answer(reply)

    async def _send(
        self, loop: asyncio.AbstractEventLoop, frame: bytes, deadline: float | None
    ) -> None:
        try:
            sent = self._channel.send(frame)
        except BlockingIOError:
            sent = 0
        if sent < len(frame):  # a large request and a full socket buffer
            async with asyncio.timeout_at(deadline):
                await loop.sock_sendall(self._channel, memoryview(frame)[sent:])

    def _serve_on(self, loop: asyncio.AbstractEventLoop) -> None:
        self._leave_loop()
        self._channel.setblocking(False)
        loop.add_reader(self._channel.fileno(), self._on_readable)
        self._loop = loop

    def _leave_loop(self) -> None:
        """Stop the selector of the loop that watched the channel (it must not be running on
        another thread: the channel is then that loop's alone)."""
        loop, self._loop = self._loop, None
        if loop is None or loop.is_closed():
            return
        if loop.is_running() and _running_loop() is not loop:
            self._loop = loop
            raise SandboxError("this session is served by an event loop on another thread")
        loop.remove_reader(self._channel.fileno())

    def _on_readable(self) -> None:
        """The loop's callback: the reply's bytes, the end of the stream, or garbage."""
        try:
            data = self._channel.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(ConnectionResetError(f"the session's channel failed: {exc}"))
            return
        if not data:
            self._fail(ConnectionResetError("the session process closed its channel"))
            return
        self._reader.feed(data)
        try:
            frame = self._reader.next_frame()
        except FrameError as exc:
            self._fail(exc)
            return
        if frame is None:
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            self._fail(FrameError("a reply to no request"))
            return
        waiter.set_result(frame)
        if self._reader.buffered:
            self._fail(FrameError("more than one reply to one request"))

    def _fail(self, reason: Exception) -> None:
        """The channel is useless: stop watching it, and tell the call waiting (or the next)."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.remove_reader(self._channel.fileno())
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(reason)
        if self._closed:
            self._channel.close()
        else:
            self._broken = reason

    def _answer(self, reply: Reply) -> Reply:
        if "__error__" in reply:
            raise SandboxError(f"the session's handler failed: {reply['__error__']}")
        return reply

    def _crashed(self, exc: Exception) -> SessionCrashed:
        """Kill what is left, close, and say how the process ended."""
        self.close()
        if isinstance(exc, FrameError):
            return SessionCrashed(f"the session process sent an unreadable reply ({exc}); killed")
        return SessionCrashed(
            f"the session's process {self.pid} {self._host.exit_status(self.pid or 0)}, "
            "and what its episode had built up with it"
        )

    def close(self) -> None:
        """Kill the process now; the channel is closed by the loop watching it, if one does
        (closing it under a running selector would let a new channel take its number)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        os.close(self._pidfd)
        self._release_channel()
        if self.pid is not None:
            shutil.rmtree(self._host.session_folder(self.pid), ignore_errors=True)

    def _release_channel(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            self._channel.close()
        elif _running_loop() is loop or not loop.is_running():
            self._fail(SandboxError("the session is closed"))
        else:
            try:
                loop.call_soon_threadsafe(self._release_channel)
            except RuntimeError:  # closed meanwhile
                self._channel.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _expire(waiter: asyncio.Future[Reply]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
