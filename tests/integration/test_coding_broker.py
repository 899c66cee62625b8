"""The coding env as users run it: ``openenv-broker start --env coding``, a batch of contained
sessions stepped through the broker, escape attempts each in one session of a batch whose other
sessions answer normally, a session killed from outside, and an OpenEnv client on the gateway."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
from coding_env import CodeAction, CodingEnv

from bench.faults.cluster import descendants
from openenv_zmq import BatchClient
from openenv_zmq.errors import ActionValidationError, SessionCrashed
from openenv_zmq.sandbox.layers import is_on
from tests.processes import REPO_ROOT, Processes, cli, free_port, wait_until

pytestmark = pytest.mark.integration

SNIPPET = "x = 6 * 7\nprint(x)"
DEADLINE_S = 4.0

# Each attempt and what its stderr says: smolagents' interpreter refuses most before any layer of
# ours is reached (tests/integration/test_sandbox_host.py proves the layers on their own).
ESCAPES = {
    "import os": "Import of os is not allowed",
    "import subprocess": "Import of subprocess is not allowed",
    "import ctypes": "Import of ctypes is not allowed",
    "import socket\nsocket.create_connection(('127.0.0.1', 5555))": "Import of socket",
    "().__class__.__base__.__subclasses__()": "Forbidden access to dunder attribute",
    "f = lambda: 0\nf.__globals__['__builtins__']": "Forbidden access to dunder attribute",
    "getattr(print, '__self__')": "Forbidden access to dunder attribute",
    "open('/etc/passwd').read()": "Forbidden function evaluation: 'open'",
    "open('/proc/1/environ').read()": "Forbidden function evaluation: 'open'",
    "open('notes.txt', 'w').write('x')": "Forbidden function evaluation: 'open'",
    "eval('1 + 1')": "Forbidden function evaluation: 'eval'",
    "exec('x = 1')": "Forbidden function evaluation: 'exec'",
    "__import__('os').getenv('HOME')": "Forbidden function evaluation: '__import__'",
    "x = 'a' * 10**10": "MemoryError",
    "while True:\n    pass": "",  # smolagents' iteration cap or the deadline, whichever is first
    "import time\ntime.sleep(10**6)": "ExecutionTimeoutError: Code execution exceeded",
}


def test_a_batch_of_contained_sessions_with_escapes_among_them(procs: Processes) -> None:
    broker = procs.broker(workers=2, envs=("coding",))
    with BatchClient(broker.frontend) as client:
        for worker in client.workers():
            assert is_on(worker["sandbox"]["seccomp"]) and is_on(worker["sandbox"]["rlimits"])
        envs = client.make("coding", num_envs=64)
        first = envs.reset()
        assert first.errors == {} and all(o.reward == 0.0 for o in first.observations)
        r = envs.step([CodeAction(code=SNIPPET)] * 64)
        assert r.errors == {}
        assert {(o.stdout, o.exit_code, o.reward) for o in r.observations} == {("42\n", 0, 0.1)}

        codes = [*ESCAPES, "print('x' * 10**8)"]
        actions = [CodeAction(code=c) for c in codes]
        actions += [CodeAction(code="x")] * (64 - len(actions))  # x persists from the last step
        started = time.monotonic()
        r = envs.step(actions, timeout_s=DEADLINE_S)
        took = time.monotonic() - started
        assert r.errors == {}
        assert took < DEADLINE_S + 3, "the batch answered at the deadline, not after it"
        for code, obs in zip(codes, r.observations, strict=False):
            if code.startswith("print('x'"):
                assert obs.exit_code == 0 and len(obs.stdout) < 100_000, "the print log is capped"
                continue
            assert obs.exit_code == 1 and obs.stdout == "", code
            assert ESCAPES[code] in obs.stderr, (code, obs.stderr[-300:])
        sleeper = r.observations[codes.index("import time\ntime.sleep(10**6)")]
        assert sleeper.metadata["session_restarted"] is True
        assert [o.stdout for o in r.observations[len(codes) :]] == ["42"] * (64 - len(codes))

        # Every session answers on (the killed ones in a fresh process).
        r = envs.step([CodeAction(code="1 + 1")] * 64)
        assert r.errors == {} and {o.stdout for o in r.observations} == {"2"}
        envs.close()


def test_a_session_killed_from_outside_is_that_envs_error_and_the_env_goes_on(
    procs: Processes,
) -> None:
    broker = procs.broker(workers=1, envs=("coding",))
    with BatchClient(broker.frontend) as client:
        envs = client.make("coding", num_envs=8)
        envs.reset()
        envs.step([CodeAction(code="kept = 1")] * 8)
        (worker,) = broker.worker_pids() & {w["pid"] for w in client.workers()}
        sessions_before = descendants(worker)
        victim = max(sessions_before)  # a session (the zygote is the oldest, smallest pid)
        subprocess.run(["kill", "-9", str(victim)], check=True)
        r = envs.step([CodeAction(code="kept")] * 8)
        assert len(r.errors) == 1
        (error,) = r.errors.values()
        assert isinstance(error, SessionCrashed) and "SIGKILL" in str(error)
        assert [o.stdout for o in r.observations if o is not None] == ["1"] * 7
        again = envs.step([CodeAction(code="1 + 1")] * 8)
        assert again.errors == {} and {o.stdout for o in again.observations} == {"2"}
        envs.close()


def test_bad_code_actions_are_per_env_errors(procs: Processes) -> None:
    broker = procs.broker(workers=1, envs=("coding",))
    with BatchClient(broker.frontend) as client:
        envs = client.make("coding", num_envs=4)
        envs.reset()
        r = envs.step([{}, {"code": 42}, {"code": "x = 1\n" * 1_000_000}, {"code": "1"}])
        assert isinstance(r.errors[r.env_ids[0]], ActionValidationError)
        assert isinstance(r.errors[r.env_ids[1]], ActionValidationError)
        assert "characters long" in str(r.errors[r.env_ids[2]])
        assert r.observations[3].stdout == "1"
        envs.close()


def test_an_openenv_client_steps_a_contained_session_through_the_gateway(
    procs: Processes,
) -> None:
    port = free_port()
    procs.broker(workers=1, envs=("coding",), extra=("--gateway-port", str(port)))

    def gateway_up() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    wait_until(gateway_up, 60, "the gateway to listen")
    with CodingEnv(base_url=f"http://127.0.0.1:{port}").sync() as env:
        assert env.reset().observation.exit_code == 0
        result = env.step(CodeAction(code=SNIPPET))
        assert result.observation.stdout == "42\n" and result.reward == pytest.approx(0.1)
        assert env.state().last_exit_code == 0


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (("--sandbox-require", "netns", "--sandbox-optional", "netns"), "both name netns"),
        (("--sandbox-require", "firewall"), "'firewall' is not one of"),
    ],
)
def test_sandbox_flag_mistakes_are_one_line_and_exit_code_2(
    flags: tuple[str, ...], complaint: str
) -> None:
    done = subprocess.run(
        cli("start", "--env", "coding", "--bind", "tcp://127.0.0.1:*", *flags),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert complaint in done.stderr and "Traceback" not in done.stderr


def test_unsafe_in_process_code_is_the_operators_choice_and_shows_in_status(
    procs: Processes,
) -> None:
    broker = procs.broker(workers=1, envs=("coding",), extra=("--unsafe-in-process-code",))
    with BatchClient(broker.frontend) as client:
        (worker,) = client.workers()
        assert list(worker["sandbox"]) == ["in-process"]
        envs = client.make("coding", num_envs=2)
        envs.reset()
        assert {o.stdout for o in envs.step([CodeAction(code="6 * 7")] * 2).observations} == {"42"}
        envs.close()
    status = subprocess.run(
        cli("status", "--connect", broker.frontend),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert "in-process" in status.stdout
