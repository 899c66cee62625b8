"""The sandbox's own layers, each proven without smolagents in front: raw Python (the test-only
:class:`tests.sandbox_raw.RawPython` handler) in real session processes, forked by a real zygote
that runs in a memory- and pids-limited cgroup this module makes."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.faults.cluster import alive
from openenv_zmq.errors import SandboxError, SessionCrashed
from openenv_zmq.sandbox.contained import ContainedHost
from openenv_zmq.sandbox.layers import Layer, SandboxPolicy, SessionLimits, is_on
from openenv_zmq.sandbox.sessions import Session, SessionTimedOut
from tests.processes import wait_until
from tests.sandbox_cgroup import bomb_cgroup

pytestmark = pytest.mark.integration

RAW = "tests.sandbox_raw:RawPython"
ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def host() -> Iterator[ContainedHost]:
    with bomb_cgroup() as inside:
        with inside():
            contained = ContainedHost(preload=[RAW])
        try:
            yield contained
        finally:
            contained.close()


@pytest.fixture
def session(host: ContainedHost) -> Iterator[Session]:
    opened = host.open(RAW)
    yield opened
    opened.close()


def run(session: Session, code: str, timeout_s: float = 20.0) -> dict[str, Any]:
    return session.call({"code": code}, timeout_s)


def assert_serving(host: ContainedHost) -> None:
    fresh = host.open(RAW)
    try:
        assert run(fresh, "result = 'still serving'")["ok"]
    finally:
        fresh.close()


def test_the_required_layers_are_on_and_every_layer_is_reported(host: ContainedHost) -> None:
    layers = host.layers
    assert set(layers) == {layer.value for layer in Layer}
    assert is_on(layers["seccomp"]), layers
    assert is_on(layers["rlimits"]), layers
    if ROOT:
        assert layers["uid"].startswith("on: a uid of its own")
        assert is_on(layers["netns"]), layers


@pytest.mark.parametrize(
    ("attempt", "code", "refusal"),
    [
        ("a socket", "import socket; socket.socket()", "PermissionError"),
        (
            "a unix socket to the broker",
            "import socket; socket.socket(socket.AF_UNIX).connect('/tmp/x')",
            "PermissionError",
        ),
        ("exec", "import os; os.execv('/bin/sh', ['sh', '-c', 'true'])", "PermissionError"),
        ("fork", "import os; os.fork()", "PermissionError"),
        ("a fork bomb", "import os\nwhile True: os.fork()", "PermissionError"),
        ("subprocess", "import subprocess; subprocess.run(['true'])", "PermissionError"),
        ("signalling the zygote", "import os; os.kill(os.getppid(), 9)", "PermissionError"),
        (
            "ptrace of the zygote",
            "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "if libc.ptrace(16, os.getppid(), 0, 0) != 0:\n"
            "    raise PermissionError(ctypes.get_errno(), 'ptrace')",
            "PermissionError",
        ),
        ("a memory bomb", "x = bytearray(4 * 2**30)", "MemoryError"),
        ("a file past the size limit", "open('big', 'wb').write(b'x' * 17 * 2**20)", "OSError"),
        ("too many open files", "fs = [open('f%d' % i, 'w') for i in range(100)]", "OSError"),
        ("reading its own environ", "open('/proc/self/environ').read()", "PermissionError"),
        ("reading init's environ", "open('/proc/1/environ').read()", "PermissionError"),
    ],
)
def test_raw_python_is_stopped_by_the_layer_meant_to_stop_it(
    session: Session, attempt: str, code: str, refusal: str
) -> None:
    answer = run(session, code)
    assert answer["ok"] is False, f"{attempt}: {answer}"
    assert answer["error"] == refusal, f"{attempt}: {answer}"
    # The session lives on after a refusal.
    assert run(session, "result = 6 * 7") == {"ok": True, "result": "42"}


def test_the_workers_environment_and_files_are_out_of_reach(
    host: ContainedHost, session: Session
) -> None:
    assert Path(f"/proc/{host.zygote_pid}/environ").read_bytes() == b""
    assert run(session, "import os; result = dict(os.environ)")["result"] == "{}"
    worker_environ = run(session, f"open('/proc/{os.getpid()}/environ').read()")
    assert worker_environ["error"] == "PermissionError"


def test_a_session_holds_no_inherited_descriptor_and_an_empty_folder_of_its_own(
    host: ContainedHost, session: Session
) -> None:
    code = (
        "import os\n"
        "def is_open(fd):\n"
        "    try:\n"
        "        os.fstat(fd)\n"
        "        return True\n"
        "    except OSError:\n"
        "        return False\n"
        "result = ([fd for fd in range(1024) if is_open(fd)], os.getcwd(), os.listdir('.'))"
    )
    fds, cwd, listing = eval(run(session, code)["result"])
    assert len(fds) == 4 and fds[:3] == [0, 1, 2]  # stdio on /dev/null, and its channel
    assert cwd == host.session_folder(session.pid or 0)
    assert listing == []
    assert run(session, "open('notes.txt', 'w').write('kept')")["ok"]
    if ROOT:  # each session has a uid of its own
        other = host.open(RAW)
        try:
            assert run(other, f"import os; os.listdir({cwd!r})")["error"] == "PermissionError"
            assert run(other, f"import os; os.kill({session.pid}, 0)")["error"] == "PermissionError"
        finally:
            other.close()
    session.close()
    assert not Path(cwd).exists()


def test_a_missed_deadline_kills_only_that_session(host: ContainedHost) -> None:
    looping, bystander = host.open(RAW), host.open(RAW)
    try:
        started = time.monotonic()
        with pytest.raises(SessionTimedOut):
            run(looping, "while True: pass", timeout_s=0.5)
        assert time.monotonic() - started < 5
        wait_until(lambda: not alive(looping.pid or 0), 5, "the looping session to die")
        assert run(bystander, "result = 1 + 1")["result"] == "2"
        with pytest.raises(SessionTimedOut):
            run(bystander, "import time; time.sleep(10**6)", timeout_s=0.3)
    finally:
        looping.close()
        bystander.close()


def test_a_session_that_dies_is_reported_with_how(host: ContainedHost) -> None:
    session = host.open(RAW)
    with pytest.raises(SessionCrashed, match="exited with code 3"):
        run(session, "import os; os._exit(3)")
    session = host.open(RAW)
    with pytest.raises(SessionCrashed, match="SIGSEGV"):
        run(session, "import ctypes; ctypes.string_at(0)")
    assert_serving(host)


def test_100_mb_of_output_ends_the_session_not_the_host(host: ContainedHost) -> None:
    session = host.open(RAW)
    with pytest.raises(SessionCrashed, match="unreadable reply"):
        run(session, "result = 'x' * 10**8")
    assert_serving(host)


def test_a_session_over_its_cpu_time_is_killed() -> None:
    policy = SandboxPolicy(limits=SessionLimits(cpu_s=1))
    with bomb_cgroup() as inside:
        with inside():
            limited = ContainedHost(policy, preload=[RAW])
        try:
            session = limited.open(RAW)
            with pytest.raises(SessionCrashed, match=r"SIGXCPU|SIGKILL"):
                run(session, "while True: pass", timeout_s=20)
        finally:
            limited.close()


@pytest.mark.skipif(not ROOT, reason="a network namespace of its own needs root here")
def test_the_zygote_has_an_empty_network_namespace(host: ContainedHost) -> None:
    ours = os.readlink("/proc/self/ns/net")
    assert os.readlink(f"/proc/{host.zygote_pid}/ns/net") != ours
    interfaces = Path(f"/proc/{host.zygote_pid}/net/dev").read_text().splitlines()[2:]
    assert [line.split(":")[0].strip() for line in interfaces] == ["lo"]


def test_the_pids_cgroup_caps_the_zygote_and_its_sessions(host: ContainedHost) -> None:
    if not is_on(host.layers["pids-cgroup"]):
        pytest.skip(host.layers["pids-cgroup"])
    for line in Path(f"/proc/{host.zygote_pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            folder = Path("/sys/fs/cgroup/pids", path.lstrip("/"))
            break
    else:
        folder = Path("/sys/fs/cgroup/unified", line.split(":", 2)[2].lstrip("/"))
    assert folder.name.startswith("openenv-zmq-")
    assert (folder / "pids.max").read_text().strip() == str(SessionLimits().pids_max)


def test_sessions_die_with_their_zygote() -> None:
    with bomb_cgroup() as inside:
        with inside():
            doomed = ContainedHost(preload=[RAW])
        sessions = [doomed.open(RAW) for _ in range(3)]
        os.kill(doomed.zygote_pid, signal.SIGKILL)
        for session in sessions:
            wait_until(lambda s=session: not alive(s.pid or 0), 5, "a session to die")
        doomed.close()


def test_closing_the_host_ends_everything_it_started() -> None:
    with bomb_cgroup() as inside:
        with inside():
            host = ContainedHost(preload=[RAW])
        sessions = [host.open(RAW) for _ in range(3)]
        zygote = host.zygote_pid
        host.close()
        for pid in [zygote, *(s.pid or 0 for s in sessions)]:
            wait_until(lambda p=pid: not alive(p), 5, f"process {pid} to end")


# Sessions used from an event loop: the channel stays with the loop's selector between calls.

ANSWER_TWICE = """
import os, stat
def is_socket(fd):
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False
channel = next(fd for fd in range(3, 64) if is_socket(fd))
os.write(channel, bytes([0, 0, 0, 1, 0x80]))  # a whole frame: an empty map
result = 'the real reply'
"""


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_async_calls_on_one_loop_answer_each_session_in_turn(host: ContainedHost) -> None:
    sessions = [host.open(RAW) for _ in range(8)]

    async def rounds() -> list[list[str]]:
        answers = []
        for _ in range(3):
            replies = await asyncio.gather(
                *(s.call_async({"code": f"result = {i} * 7"}, 10) for i, s in enumerate(sessions))
            )
            answers.append([reply["result"] for reply in replies])
        return answers

    try:
        assert asyncio.run(rounds()) == [[str(i * 7) for i in range(8)]] * 3
        # that loop is closed: the same sessions go on, blocking, then on another loop
        assert run(sessions[0], "result = 'blocking'")["result"] == "'blocking'"
        assert asyncio.run(sessions[0].call_async({"code": "result = 2"}, 10))["result"] == "2"
    finally:
        for s in sessions:
            s.close()


def test_an_async_deadline_kills_only_that_session(host: ContainedHost) -> None:
    looping, bystander = host.open(RAW), host.open(RAW)

    async def both() -> tuple[Any, Any]:
        return await asyncio.gather(
            looping.call_async({"code": "while True: pass"}, 0.5),
            bystander.call_async({"code": "result = 'fine'"}, 10),
            return_exceptions=True,
        )

    try:
        started = time.monotonic()
        timed_out, answered = asyncio.run(both())
        assert time.monotonic() - started < 5
        assert isinstance(timed_out, SessionTimedOut)
        assert answered["result"] == "'fine'"
        wait_until(lambda: not alive(looping.pid or 0), 5, "the looping session to die")
        with pytest.raises(SandboxError, match="closed"):
            asyncio.run(looping.call_async({"code": "result = 1"}, 10))
    finally:
        looping.close()
        bystander.close()


def test_a_session_that_dies_mid_async_call_is_reported_with_how(host: ContainedHost) -> None:
    session = host.open(RAW)
    with pytest.raises(SessionCrashed, match="exited with code 3"):
        asyncio.run(session.call_async({"code": "import os; os._exit(3)"}, 10))
    assert_serving(host)


def test_a_cancelled_async_call_ends_its_session(host: ContainedHost) -> None:
    session = host.open(RAW)

    async def cancelled() -> None:
        call = asyncio.ensure_future(
            session.call_async({"code": "import time; time.sleep(30)"}, 60)
        )
        await asyncio.sleep(0.3)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    asyncio.run(cancelled())
    # its reply could still come and answer the next call: the session is gone instead
    wait_until(lambda: not alive(session.pid or 0), 5, "the cancelled session to die")
    with pytest.raises(SandboxError, match="closed"):
        run(session, "result = 1")


def test_a_session_that_answers_twice_is_cut_off(host: ContainedHost) -> None:
    session = host.open(RAW)

    async def twice() -> dict[str, Any]:
        first = await session.call_async({"code": ANSWER_TWICE}, 10)
        with pytest.raises(SessionCrashed, match=r"more than one reply|a reply to no request"):
            await session.call_async({"code": "result = 1"}, 10)
        return first

    assert asyncio.run(twice()) == {}  # the forged frame came first: its own row, nobody else's
    assert_serving(host)


def test_a_loop_on_another_thread_keeps_its_sessions(host: ContainedHost) -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    before = _open_fds()
    session = host.open(RAW)
    try:
        reply = asyncio.run_coroutine_threadsafe(
            session.call_async({"code": "result = 'on the loop'"}, 10), loop
        ).result(10)
        assert reply["result"] == "'on the loop'"
        with pytest.raises(SandboxError, match="event loop on another thread"):
            run(session, "result = 1")
        # closed from here, the process dies now and the loop lets go of the channel
        session.close()
        wait_until(lambda: not alive(session.pid or 0), 5, "the session to die")
        wait_until(lambda: _open_fds() == before, 5, "the session's channel to be closed")
    finally:
        session.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
