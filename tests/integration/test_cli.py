"""The ``openenv-broker`` commands as a user runs them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from bench.faults.cluster import alive
from broker.providers.slots import MAX_QUICK_DEATHS
from openenv_zmq import BatchClient
from tests.processes import REPO_ROOT, Processes, cli, free_port, wait_until

COMMANDS = ["start", "worker", "status", "bench", "gateway", "push", "keys"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help(command: str | None) -> None:
    args = ["--help"] if command is None else [command, "--help"]
    done = subprocess.run(cli(*args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout
    if command is None:
        assert all(c in done.stdout for c in COMMANDS)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_start_stops_cleanly_on_a_signal(procs: Processes, sig: int) -> None:
    broker = procs.broker(workers=2, transport="ipc")
    wait_until(lambda: len(broker.worker_pids()) >= 2, 30, "two worker processes")
    assert broker.stop(sig) == 0
    # procs' teardown fails the test if a worker process or an ipc file outlives the broker


def test_ctrl_c_stops_a_cluster_quietly(procs: Processes, tmp_path: Path) -> None:
    from coding_env import CodeAction

    log = tmp_path / "broker.log"
    gateway = ("--gateway-port", str(free_port()))
    broker = procs.broker(envs=("echo", "coding"), extra=gateway, log=log, own_group=True)
    wait_until(lambda: len(broker.worker_pids()) >= 4, 30, "the workers and the gateway")
    with broker.client() as client:  # envs and contained sessions held, as at a trainer's Ctrl-C
        client.make("echo", num_envs=4).reset()
        coding = client.make("coding", num_envs=2)
        coding.reset()
        coding.step([CodeAction(code="print(1)")] * 2)
        broker.worker_pids()  # the sessions too, for the leak check
        # What a terminal does on Ctrl-C: SIGINT to every process of the foreground group.
        os.killpg(broker.process.pid, signal.SIGINT)
        assert broker.stop() == 0
    # Before: every worker, signalled too, left first, and the broker killed it and logged
    # "killing worker local-0: the broker declared it dead"; the zygote printed a traceback.
    assert log.read_text() == ""


def test_ctrl_c_while_the_cluster_starts_is_quiet(procs: Processes, tmp_path: Path) -> None:
    # An env that takes seconds to import: the workers are still importing it once the broker
    # is ready, and the gateway waits for one of them to host it.
    (tmp_path / "slow_envs.py").write_text(
        "import time\n"
        "time.sleep(2)\n"
        "from echo_env.server.echo_environment import EchoEnvironment as SlowEnv\n"
    )
    log = tmp_path / "broker.log"
    port = free_port()
    extra = ("--app-dir", str(tmp_path), "--gateway-port", str(port))
    broker = procs.broker(
        envs=("slow_envs:SlowEnv",), extra=extra, log=log, own_group=True, wait=False
    )
    # Each child names itself, then imports the env (the gateway once a worker has joined):
    # each gets the children's part of a Ctrl-C as soon as it is named, while it starts. The
    # broker, which stops its children itself, is left out, so nothing cuts their output short.
    titles = {f"openenv-zmq worker local-{i} {broker.backend}" for i in range(2)}
    titles.add(f"openenv-zmq gateway http://127.0.0.1:{port} {broker.frontend}")
    signalled: dict[str, int] = {}

    def signal_the_named() -> bool:
        for pid in broker.worker_pids():
            title = command_line(pid)
            if title in titles and title not in signalled:
                os.kill(pid, signal.SIGINT)
                signalled[title] = pid
        return len(signalled) == len(titles)

    wait_until(signal_the_named, 30, "the workers and the gateway starting")
    broker.wait_for_workers(2)
    wait_until(lambda: _answers(f"http://127.0.0.1:{port}/health"), 30, "the gateway serving")
    assert all(alive(pid) for pid in signalled.values())
    os.killpg(broker.process.pid, signal.SIGINT)
    assert broker.stop() == 0
    # Before: each child's KeyboardInterrupt traceback; the broker replaced the workers.
    assert log.read_text() == ""


def _answers(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as response:
        return bool(response.status == 200)
    return False


def test_ctrl_c_of_a_gateway_waiting_for_a_worker_is_quiet(procs: Processes) -> None:
    broker = procs.broker(workers=0)
    args = ("gateway", "--connect", broker.frontend, "--env", "echo", "--port", str(free_port()))
    gateway = subprocess.Popen(
        cli(*args), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        title = f"openenv-zmq gateway http://127.0.0.1:{args[-1]} {broker.frontend}"
        wait_until(lambda: command_line(gateway.pid) == title, 30, "the gateway waiting")
        gateway.send_signal(signal.SIGINT)
        out, err = gateway.communicate(timeout=30)
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.communicate()
    # Before: click's "Aborted!" and exit code 1; once serving, uvicorn already exited 0.
    assert (gateway.returncode, err) == (0, "")
    assert out.startswith("gateway for 'echo'")


def command_line(pid: int) -> str:
    with contextlib.suppress(OSError):  # a process that ended meanwhile has none
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return ""


def test_processes_are_named_in_ps(procs: Processes) -> None:
    port = free_port()
    broker = procs.broker(workers=1, extra=("--gateway-port", str(port)))

    named = {
        f"openenv-zmq worker local-0 {broker.backend}",
        f"openenv-zmq gateway http://127.0.0.1:{port} {broker.frontend}",
    }
    # The gateway names itself once it has imported its modules, after the broker is ready.
    wait_until(
        lambda: named <= {command_line(pid) for pid in broker.worker_pids()},
        30,
        f"processes named {named}",
    )
    assert command_line(broker.process.pid) == f"openenv-zmq broker {broker.frontend}"
    assert broker.stop() == 0


def test_status_prints_workers_and_slots(procs: Processes) -> None:
    broker = procs.broker(workers=2)
    wait_until(
        lambda: (
            "local-1"
            in subprocess.run(
                cli("status", "--connect", broker.frontend),
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
        ),
        30,
        "both workers in status",
    )
    done = subprocess.run(
        cli("status", "--connect", broker.frontend, "--json"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    info = json.loads(done.stdout)
    assert sorted(w["name"] for w in info["workers"]) == ["local-0", "local-1"]
    assert info["env_slots"] == {"used": 0, "free": 2 * 4096}
    with BatchClient(broker.frontend) as client:
        client.make("echo", num_envs=3)
        shown = subprocess.run(
            cli("status", "--connect", broker.frontend),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    # Only a client that makes envs opens a session: the status commands opened none.
    assert "client sessions: 1 live, holding 1 env group(s) of 3 env(s)" in shown


def test_status_of_a_missing_broker_fails_with_a_message() -> None:
    done = subprocess.run(
        cli("status", "--connect", "tcp://127.0.0.1:9", "--timeout", "0.3"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "BrokerUnreachable" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    args = ("--log-level", "debug", "status", "--connect", "tcp://127.0.0.1:9", "--timeout", "0.3")
    debug = subprocess.run(cli(*args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "BrokerUnreachable" in debug.stdout + debug.stderr


def test_bench_runs_an_embedded_cluster_and_prints_a_table() -> None:
    done = subprocess.run(
        cli("bench", "--num-envs", "64", "--duration", "1"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for column in ("env-steps/s", "batch p50", "batch p99", "echo"):
        assert column in done.stdout


def test_bench_against_a_running_broker_reports_json(procs: Processes) -> None:
    broker = procs.broker(workers=2)
    done = subprocess.run(
        cli(
            "bench", "--connect", broker.frontend, "--num-envs", "32", "--duration", "0.5", "--json"
        ),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["num_envs"] == 32 and report["env_steps"] == 32 * report["batches"]
    assert report["env_steps_per_s"] > 0


def test_workers_exit_when_their_broker_is_killed(procs: Processes) -> None:
    broker = procs.broker(workers=2)
    workers = broker.worker_pids()
    assert len(workers) >= 2
    assert broker.stop(signal.SIGKILL) == -signal.SIGKILL
    wait_until(lambda: not any(alive(pid) for pid in workers), 10, "orphaned workers to exit")


def test_start_serves_a_gateway_that_openenv_clients_use(procs: Processes) -> None:
    import asyncio
    import socket
    import urllib.request

    import websockets
    from openenv.core.generic_client import GenericEnvClient  # type: ignore[import-untyped]

    port = free_port()
    broker = procs.broker(
        workers=2, extra=("--gateway-port", str(port), "--max-sessions", "1", "--web")
    )

    async def session() -> tuple[object, object, object]:
        async with GenericEnvClient(base_url=f"http://127.0.0.1:{port}") as client:
            reset = await client.reset()
            step = await client.step({"message": "Hello"})
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as second:
                refusal = json.loads(await asyncio.wait_for(second.recv(), 10))
            return reset.observation, (step.observation, step.reward), refusal["data"]

    def gateway_up() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    wait_until(gateway_up, 60, "the gateway to listen")
    reset, step, refusal = asyncio.run(session())
    assert reset == {
        "metadata": {},
        "echoed_message": "Echo environment ready!",
        "message_length": 0,
    }
    assert step == ({"metadata": {}, "echoed_message": "Hello", "message_length": 5}, 0.5)
    assert refusal == {
        "message": "Server at capacity (1 sessions)",
        "code": "CAPACITY_REACHED",
        "active_sessions": 1,
        "max_sessions": 1,
    }
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/web/", timeout=10) as page:
        assert page.status == 200 and b"<form" in page.read()
    assert broker.stop() == 0


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("start", "--env", "nope"), "no env named 'nope'"),
        (
            ("start", "--workers", "1", "--env", "tests.unit.env_module_failing_at_import:Env"),
            "raised RuntimeError: this env module is broken on purpose",
        ),
        (("worker", "--connect", "tcp://127.0.0.1:9", "--env", "no_such_module_xyz:Env"), "xyz"),
        (("bench", "--env", "nope"), "no env named 'nope'"),
        (("push", "--repo-id", "org/name", "--env", "nope", "--dry-run"), "no env named 'nope'"),
    ],
)
def test_an_env_that_does_not_import_is_a_usage_error(args: tuple[str, ...], reason: str) -> None:
    # Before: start's workers died at import and were restarted forever.
    done = subprocess.run(cli(*args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    [error] = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert "'--env'" in error and reason in error
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("gateway", "--max-sessions", "0"), "--max-sessions"),
        (("gateway", "--idle-timeout", "0"), "--idle-timeout"),
        (("gateway", "--header-timeout", "0"), "--header-timeout"),
        (("start", "--gateway-port", "1", "--header-timeout", "-1"), "--header-timeout"),
        (("start", "--gateway-port", "1", "--max-frame-mb", "-1"), "--max-frame-mb"),
        (("start", "--gateway-port", "70000"), "--gateway-port"),
        (("start", "--workers", "-1"), "--workers"),
        (("start", "--capacity", "0"), "--capacity"),
        (("start", "--heartbeat", "0"), "--heartbeat"),
        (("start", "--max-message-mb", "0"), "--max-message-mb"),
        (("start", "--lease", "0"), "--lease"),
        (("start", "--lease", "2", "--heartbeat", "1"), "--lease"),
        (("start", "--max-envs-per-client", "0"), "--max-envs-per-client"),
        (("start", "--gateway-port", "1", "--max-envs-per-client", "8"), "--max-envs-per-client"),
        (("worker", "--connect", "tcp://127.0.0.1:9", "--capacity", "-5"), "--capacity"),
        (("worker", "--connect", "tcp://127.0.0.1:9", "--max-threads", "0"), "--max-threads"),
        (("start", "--max-threads", "x"), "--max-threads"),
        (("gateway", "--port", "0"), "--port"),
        (("status", "--timeout", "-1"), "--timeout"),
        (("bench", "--num-envs", "0"), "--num-envs"),
        (("bench", "--workers", "0"), "--workers"),
        (("bench", "--duration", "-1"), "--duration"),
    ],
)
def test_numeric_options_are_range_checked(args: tuple[str, ...], named: str) -> None:
    done = subprocess.run(cli(*args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    assert named in done.stderr and "Traceback" not in done.stderr


def test_workers_that_die_as_they_start_stop_the_broker_after_a_few_tries() -> None:
    # Before: restarted every 10 s forever, a traceback each time.
    args = ["start", "--workers", "1", "--bind", "tcp://127.0.0.1:*"]
    args += ["--worker-bind", "tcp://127.0.0.1:*"]
    args += ["--env", "tests.unit.env_module_failing_in_workers:Env"]
    done = subprocess.run(cli(*args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done
    said = done.stdout + done.stderr
    assert len(re.findall(r"worker local-0\S* exited with code 1$", said, re.M)) == MAX_QUICK_DEATHS
    assert "not starting it again" in said
    [error] = [line for line in said.splitlines() if line.startswith("error:")]
    assert error.startswith("error: WorkersFailing: every local worker died")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("start", "--bind", "127.0.0.1:5555"), "--bind"),
        (("start", "--worker-bind", "tcp:/127.0.0.1:1"), "--worker-bind"),
        (("worker", "--connect", "udp://127.0.0.1:1"), "--connect"),
        (("status", "--connect", "localhost:5555"), "--connect"),
        (("bench", "--connect", "127.0.0.1"), "--connect"),
        (("gateway", "--connect", "ipc://"), "--connect"),
    ],
)
def test_an_address_without_its_scheme_is_a_usage_error(args: tuple[str, ...], named: str) -> None:
    done = subprocess.run(cli(*args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    assert named in done.stderr and "tcp://HOST:PORT" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("tcp://0.0.0.0:5556", "every interface"),
        ("tcp://broker", "needs a port"),
        ("tcp://broker:*", "needs a port"),
        ("ipc:///tmp/back.sock", "is not tcp://HOST:PORT"),
    ],
)
def test_advertise_is_an_address_other_hosts_connect_to(address: str, reason: str) -> None:
    done = subprocess.run(
        cli("start", "--workers", "0", "--advertise", address),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done
    [error] = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert "'--advertise'" in error and reason in error
    assert "Traceback" not in done.stderr


def test_start_prints_the_advertised_worker_address_and_its_workers_join_over_loopback(
    procs: Processes, tmp_path: Path
) -> None:
    port = free_port()
    # 198.51.100.0/24 is TEST-NET-2: nobody answers there, so the local worker that joins
    # (procs.broker waits for it) came over loopback, not through the advertised address.
    extra = ("--worker-bind", f"tcp://0.0.0.0:{port}", "--insecure")
    log = tmp_path / "broker.log"
    broker = procs.broker(
        workers=1, extra=(*extra, "--advertise", f"tcp://198.51.100.7:{port}"), log=log
    )
    assert broker.backend == f"tcp://198.51.100.7:{port}"
    assert "hint:" not in log.read_text()
    assert broker.stop() == 0


def test_start_on_every_interface_without_advertise_prints_a_hint(
    procs: Processes, tmp_path: Path
) -> None:
    log = tmp_path / "broker.log"
    broker = procs.broker(
        workers=0, extra=("--worker-bind", "tcp://0.0.0.0:0", "--insecure"), log=log
    )
    port = broker.backend.removeprefix("tcp://0.0.0.0:")
    assert port.isdigit(), broker.backend
    wait_until(lambda: "hint:" in log.read_text(), 10, "the hint")
    [hint] = [line for line in log.read_text().splitlines() if line.startswith("hint:")]
    assert f"--advertise tcp://HOST:{port}" in hint


def test_a_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ("start", "--workers", "0", "--bind", f"tcp://127.0.0.1:{port}")
        done = subprocess.run(cli(*args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    said = (done.stdout + done.stderr).strip().splitlines()
    assert said == [
        f"error: TransportError: cannot listen on tcp://127.0.0.1:{port}: Address already in use"
    ], said


def test_bench_of_an_array_env_with_the_echo_action_names_the_action() -> None:
    args = ("bench", "--env", "cartpole", "--workers", "1", "--num-envs", "4", "--duration", "0.2")
    done = subprocess.run(cli(*args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done
    [error] = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert "'--action'" in error and "int64" in error
    assert "Traceback" not in done.stderr


USERS_ENV_MODULE = """
from openenv_zmq import Action, Environment, Observation, State


class Shout(Action):
    text: str


class Shouted(Observation):
    loud: str


class ShoutEnv(Environment[Shout, Shouted, State]):
    def __init__(self) -> None:
        super().__init__()
        self._state = State()

    def reset(self, seed=None, episode_id=None, **kwargs):
        self._state = State(episode_id=episode_id)
        return Shouted(loud="")

    def step(self, action, timeout_s=None, **kwargs):
        self._state.step_count += 1
        return Shouted(loud=action.text.upper(), reward=1.0)

    @property
    def state(self):
        return self._state
"""


def test_app_dir_hosts_an_env_from_the_users_own_folder(procs: Processes, tmp_path: Path) -> None:
    (tmp_path / "shout_envs.py").write_text(USERS_ENV_MODULE)
    spec = "shout_envs:ShoutEnv"
    # the premise: nothing installed provides it, so without --app-dir it is refused
    refused = subprocess.run(
        cli("start", "--env", spec), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "shout_envs" in refused.stderr
    broker = procs.broker(workers=1, envs=(spec,), extra=("--app-dir", str(tmp_path)))
    with BatchClient(broker.frontend) as client:
        envs = client.make(spec, num_envs=2)
        envs.reset()
        r = envs.step([{"text": "hi"}, {"text": "yo"}])
        r.raise_for_errors()
        # this process cannot import the env's models: observations come back as dicts
        assert [o["loud"] for o in r.observations] == ["HI", "YO"]
        assert r.rewards.tolist() == [1.0, 1.0]
    assert broker.stop() == 0
