"""The staged Hugging Face Space (``push --env coding``), built into an image and run as UID 1000:
an OpenEnv-style ``CodingEnv`` client runs code in contained sessions, OpenEnv's own client steps
the echo env on the same image.

The container shares the host's network (``--network host``), so the image's command runs with
its addresses kept on this host's loopback: the broker's frontend takes a free port (``status``
is asked there), its backend a wildcard, and the gateway listens on 127.0.0.1. All else is the
image's ``CMD``, the staged one that ``tests/unit/test_hub.py`` pins.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from coding_env import CodeAction, CodingEnv
from openenv.core.generic_client import GenericEnvClient  # type: ignore[import-untyped]

from openenv_zmq.sandbox.layers import is_on
from tests.e2e.conftest import DOCKER_TIMEOUT, SPACE_ENV, docker
from tests.processes import free_port

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20


@pytest.fixture(scope="module")
def frontend() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def command(space_image: str, frontend: str) -> list[str]:
    """The image's ``CMD`` with every address on this host's loopback."""
    cmd = docker("inspect", "--format", "{{json .Config.Cmd}}", space_image)
    command: list[str] = json.loads(cmd)
    loopback = {
        "--bind": frontend,
        "--worker-bind": "tcp://127.0.0.1:*",
        "--gateway-host": "127.0.0.1",
    }
    for flag, value in loopback.items():
        command[command.index(flag) + 1] = value
    assert command[command.index("--env") + 1] == SPACE_ENV
    return command


@dataclass
class Space:
    container: str
    url: str

    def inspect(self, template: str) -> str:
        return docker("inspect", "--format", template, self.container).strip()

    def logs(self) -> str:
        """What the container wrote to stdout and stderr, interleaved."""
        done = subprocess.run(
            ["docker", "logs", self.container],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=DOCKER_TIMEOUT,
            check=False,
        )
        return done.stdout


def wait_healthy(space: Space) -> None:
    """Until ``/health`` answers 200; fails early, with the logs, if the container exits."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{space.url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        assert space.inspect("{{.State.Running}}") == "true", (
            f"the container exited:\n{space.logs()}"
        )
        time.sleep(0.2)
    raise AssertionError(f"no /health within {START_TIMEOUT:g} s; logs:\n{space.logs()}")


@contextlib.contextmanager
def running(image: str, command: list[str], app_port: int) -> Iterator[Space]:
    """The image running as it would on a Space (its own USER), removed whatever happens."""
    name = f"openenv-space-{uuid.uuid4().hex[:12]}"
    docker("run", "--detach", "--name", name, "--network", "host", image, *command)
    try:
        started = Space(name, f"http://127.0.0.1:{app_port}")
        wait_healthy(started)
        yield started
    finally:
        docker("rm", "--force", name)


@pytest.fixture
def space(space_image: str, app_port: int, command: list[str]) -> Iterator[Space]:
    """The Space as staged: the coding env."""
    with running(space_image, command, app_port) as started:
        yield started


@pytest.fixture
def echo_space(space_image: str, app_port: int, command: list[str]) -> Iterator[Space]:
    """The same image serving the echo env."""
    echo = list(command)
    echo[echo.index("--env") + 1] = "echo"
    with running(space_image, echo, app_port) as started:
        yield started


async def reset_and_step(url: str, message: str) -> tuple[Any, Any]:
    async with GenericEnvClient(base_url=url.replace("http://", "ws://")) as client:
        reset = await client.reset()
        step = await client.step({"message": message})
        return reset, step


def test_openenv_client_resets_and_steps_the_echo_env(echo_space: Space) -> None:
    reset, step = asyncio.run(reset_and_step(echo_space.url, "Hello"))
    assert reset.observation == {
        "metadata": {},
        "echoed_message": "Echo environment ready!",
        "message_length": 0,
    }
    assert reset.reward == 0.0 and reset.done is False
    assert step.observation == {"metadata": {}, "echoed_message": "Hello", "message_length": 5}
    assert step.reward == pytest.approx(0.5) and step.done is False


def test_the_cluster_runs_as_uid_1000(space: Space) -> None:
    assert space.inspect("{{.Config.User}}") == "1000"
    assert docker("exec", space.container, "id", "-u").strip() == "1000"
    # PID 1 as the host sees it: no user namespace remaps it, so this is what it runs as.
    pid = space.inspect("{{.State.Pid}}")
    status = Path(f"/proc/{pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == ["1000"] * 4


def test_docker_stop_ends_the_cluster_with_exit_code_0(space: Space) -> None:
    started = time.monotonic()
    docker("stop", "--time", str(STOP_TIMEOUT), space.container, timeout=STOP_TIMEOUT + 30)
    # Past the grace period docker would SIGKILL the broker (exit code 137): SIGTERM to PID 1
    # must have stopped gateway, workers and broker by themselves.
    assert time.monotonic() - started < STOP_TIMEOUT
    assert space.inspect("{{.State.ExitCode}}") == "0", space.logs()
    assert space.logs().rstrip().endswith("broker stopped")


def test_coding_env_client_runs_code_in_contained_sessions(space: Space) -> None:
    with CodingEnv(base_url=space.url).sync() as env:
        reset = env.reset()
        assert reset.observation.exit_code == 0 and reset.done is False
        first = env.step(CodeAction(code="x = 6 * 7\nprint(x)"))
        assert (first.observation.stdout, first.observation.exit_code) == ("42\n", 0)
        assert first.reward == pytest.approx(0.1)
        # the episode's variables live in its session
        assert env.step(CodeAction(code="print(x + 1)")).observation.stdout == "43\n"
        refused = env.step(CodeAction(code="import os\nos.listdir('/')"))
        assert refused.observation.exit_code == 1
        assert "Import of os is not allowed" in refused.observation.stderr
        assert refused.reward == pytest.approx(-0.9)
        assert env.state().last_exit_code == 1


def test_a_memory_bomb_stays_in_its_session(space: Space) -> None:
    with (
        CodingEnv(base_url=space.url).sync() as bomber,
        CodingEnv(base_url=space.url).sync() as other,
    ):
        bomber.reset()
        other.reset()
        other.step(CodeAction(code="kept = 'still here'"))
        bombed = bomber.step(CodeAction(code="x = 'a' * 10**10"))
        assert bombed.observation.exit_code == 1
        assert "MemoryError" in bombed.observation.stderr
        assert other.step(CodeAction(code="print(kept)")).observation.stdout == "still here\n"


def test_status_shows_the_layers_a_space_allows(space: Space, frontend: str) -> None:
    status = json.loads(
        docker("exec", space.container, "openenv-broker", "status", "--connect", frontend, "--json")
    )
    assert len(status["workers"]) == 2
    for worker in status["workers"]:
        layers = worker["sandbox"]
        # needing no privilege, never skipped
        assert is_on(layers["seccomp"]) and is_on(layers["rlimits"]), layers
        # a uid of its own needs root, which a Space does not give
        assert not is_on(layers["uid"]), layers
