"""``openenv-broker start --provider docker``: worker containers on this host's engine, from an
image ``openenv-broker image build`` made here with no registry.

The containers host envs and are stepped through the broker (with CURVE on); they are made as
the provider promises (no network, read-only root, no capabilities, non-root, limits, labels,
keys as read-only files only); one that dies is replaced; the broker's stop removes them; those
of a broker killed with SIGKILL are removed at the next start; the coding env's sessions run in
them with the layers the container allows; bad input is one line and exit code 2.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from coding_env import CodeAction
from docker.models.containers import Container
from echo_env import EchoAction

from bench.faults.cluster import BrokerGone, python, read_addresses
from broker.providers.docker import KEYS_MOUNT, LABEL_BROKER, SOCKET_MOUNT
from openenv_zmq import BatchClient
from openenv_zmq.sandbox.layers import is_on
from tests.e2e.conftest import IMAGE_BUILD_TIMEOUT
from tests.processes import REPO_ROOT, cli, free_port, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
REPLACED_WITHIN = 15.0


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="module")
def worker_image(base_image: str, engine: docker.DockerClient) -> Iterator[str]:
    """The worker image for echo and coding, built by the CLI; removed after."""
    tag = f"openenv-zmq/worker-test:{uuid.uuid4().hex[:12]}"
    args = ["image", "build", "--tag", tag, "--env", "echo", "--env", "coding"]
    done = subprocess.run(
        cli(*args, "--base-image", base_image),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=IMAGE_BUILD_TIMEOUT + 600,
        check=False,
    )
    assert done.returncode == 0, done
    assert f"built {tag}" in done.stdout
    try:
        yield tag
    finally:
        engine.images.remove(tag, force=True)


@dataclass
class DockerBroker:
    process: subprocess.Popen[bytes]
    frontend: str
    backend: str
    log: Path

    def client(self, **kwargs: Any) -> BatchClient:
        return BatchClient(self.frontend, **kwargs)

    def said(self) -> str:
        return self.log.read_text(errors="replace")


def ours(engine: docker.DockerClient) -> list[Container]:
    """Every container any broker's docker provider started, running or not."""
    return list(engine.containers.list(all=True, filters={"label": LABEL_BROKER}))


@contextlib.contextmanager
def docker_broker(
    tmp_path: Path, image: str, *extra: str, workers: int = 2
) -> Iterator[DockerBroker]:
    """``openenv-broker start --provider docker`` on random loopback ports; stopped (SIGTERM)
    on the way out unless the test stopped it."""
    log = tmp_path / f"broker-{uuid.uuid4().hex[:6]}.log"
    args = ["-m", "broker", "--log-level", "INFO", "start", "--provider", "docker"]
    args += ["--image", image, "--workers", str(workers), *extra]
    args += ["--bind", f"tcp://127.0.0.1:{free_port()}"]
    args += ["--worker-bind", f"tcp://127.0.0.1:{free_port()}"]
    with log.open("wb") as stderr:
        process = python(*args, stdout=subprocess.PIPE, stderr=stderr, bufsize=0)
    try:
        try:
            frontend, backend = read_addresses(process, START_TIMEOUT)
        except BrokerGone as exc:
            raise AssertionError(f"{exc}\n{log.read_text(errors='replace')}") from None
        yield DockerBroker(process, frontend, backend, log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(STOP_TIMEOUT)
        assert process.stdout is not None
        process.stdout.close()


def live_docker_workers(client: BatchClient, count: int) -> list[dict[str, Any]]:
    """The broker's live docker workers, once there are ``count``."""
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        nonlocal found
        found = [w for w in client.workers() if w.get("provider") == "docker"]
        return len(found) >= count

    wait_until(enough, START_TIMEOUT, f"{count} docker workers")
    return found


def test_bad_input_is_one_line_and_leaves_nothing_running(
    worker_image: str, engine: docker.DockerClient, tmp_path: Path
) -> None:
    before = {c.id for c in ours(engine)}
    no_engine = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    cases = [
        ((), {"--image": "openenv-zmq/no-such-image:1"}, None, "openenv-broker image build"),
        ((), {}, no_engine, "no Docker engine answers"),
        (("--env", "gym:CartPole-v1"), {}, None, "--env gym:CartPole-v1"),
        (("--app-dir", str(tmp_path)), {}, None, "--package"),
        (("--worker-runtime", "no-such-runtime"), {}, None, "has no runtime 'no-such-runtime'"),
    ]
    for extra, options, env, hint in cases:
        image = options.get("--image", worker_image)
        args = cli("start", "--provider", "docker", "--image", image, *extra)
        args += ["--bind", f"tcp://127.0.0.1:{free_port()}"]
        args += ["--worker-bind", f"tcp://127.0.0.1:{free_port()}"]
        done = subprocess.run(
            args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=env, check=False
        )
        assert done.returncode == 2, done
        [error] = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        assert hint in error and "Traceback" not in done.stderr, done.stderr
    assert {c.id for c in ours(engine)} == before


def test_containers_host_envs_die_are_replaced_and_leave_with_the_broker(
    worker_image: str, engine: docker.DockerClient, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    subprocess.run(cli("keys", "init", str(keys)), cwd=REPO_ROOT, check=True, timeout=60)
    subprocess.run(
        cli("keys", "add", str(keys), "--client", "trainer"),
        cwd=REPO_ROOT,
        check=True,
        timeout=60,
        capture_output=True,
    )
    bundle = keys / "bundles" / "clients" / "trainer"
    extra = ("--curve-dir", str(keys), "--worker-cpus", "1", "--worker-memory", "512")
    with (
        docker_broker(tmp_path, worker_image, *extra, "--worker-pids", "512") as broker,
        broker.client(curve_dir=bundle) as client,
    ):
        workers = live_docker_workers(client, 2)
        containers = {c.name: c for c in ours(engine) if c.labels.get("openenv-zmq.worker")}
        assert len(containers) == 2
        for worker in workers:
            [container] = [
                c for c in containers.values() if str(c.id).startswith(worker["instance"])
            ]
            assert container.labels["openenv-zmq.worker"] == worker["name"]
        envs = client.make("echo", num_envs=64)
        envs.reset()
        result = envs.step([EchoAction(message="hi")] * 64)
        assert result.errors == {}
        assert {o.echoed_message for o in result.observations} == {"hi"}

        # Made as promised.
        for container in containers.values():
            config, host = container.attrs["Config"], container.attrs["HostConfig"]
            assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
            assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
            assert "no-new-privileges" in host["SecurityOpt"] and host["Init"] is True
            assert host["NanoCpus"] == 10**9 and host["Memory"] == 512 * 2**20
            assert host["PidsLimit"] == 512 and "/tmp" in host["Tmpfs"]
            assert not config["User"].startswith("0") and config["User"]
            mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
            assert set(mounts) == {SOCKET_MOUNT, KEYS_MOUNT}
            assert not any(m["RW"] for m in mounts.values())
            secret = (Path(mounts[KEYS_MOUNT]["Source"]) / "self.key_secret").read_text()
            [secret_key] = re.findall(r'secret-key = "(.+)"', secret)
            seen = " ".join([*config["Env"], *config["Cmd"], *container.attrs["Args"]])
            assert secret_key not in seen

        # A session in a container shares the worker's uid and could read its key: a worker
        # that brings that key over TCP is refused.
        stolen = tmp_path / "stolen"
        shutil.copytree(mounts[KEYS_MOUNT]["Source"], stolen)
        thief = python(
            *("-m", "broker", "worker", "--connect", broker.backend, "--env", "echo"),
            *("--curve-dir", str(stolen), "--name", "thief"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(
                lambda: "admitted over ipc:// only" in broker.said(), 20, "the key's refusal"
            )
            assert "thief" not in {w["name"] for w in client.workers()}
        finally:
            thief.kill()
            thief.wait()

        # A container that dies: its envs are lost, a new container takes its place.
        victim = next(iter(containers.values()))
        victim.kill()
        wait_until(
            lambda: envs.step([EchoAction(message="again")] * 64).errors != {},
            REPLACED_WITHIN,
            "the dead container's envs to be reported",
        )
        lost = envs.step([EchoAction(message="again")] * 64).errors
        assert 0 < len(lost) < 64
        assert {type(e).__name__ for e in lost.values()} <= {"SessionLost", "WorkerLost"}
        replaced = live_docker_workers(client, 2)
        assert victim.labels["openenv-zmq.worker"] not in {w["name"] for w in replaced}
        again = envs.reset(env_ids=list(lost))
        assert again.errors == {}
        run_dir = Path(
            next(m["Source"] for m in victim.attrs["Mounts"] if m["Destination"] == SOCKET_MOUNT)
        ).parent
        envs.close()
    broker.process.wait(STOP_TIMEOUT)
    assert broker.process.returncode == 0, broker.said()
    assert ours(engine) == []
    assert not run_dir.exists()


def test_containers_of_a_killed_broker_are_removed_at_the_next_start(
    worker_image: str, engine: docker.DockerClient, tmp_path: Path
) -> None:
    with docker_broker(tmp_path, worker_image, workers=1) as first, first.client() as client:
        live_docker_workers(client, 1)
        left = [c.name for c in ours(engine)]
        first.process.kill()
        first.process.wait(STOP_TIMEOUT)
    assert len(left) == 1 and [c.name for c in ours(engine)] == left
    with docker_broker(tmp_path, worker_image, workers=1) as second, second.client() as client:
        live_docker_workers(client, 1)
        assert left[0] not in [c.name for c in ours(engine)]
        assert f"left by a broker that is gone: {left[0]}" in second.said()
    assert ours(engine) == []


def test_coding_sessions_run_in_containers_with_the_layers_they_allow(
    worker_image: str, engine: docker.DockerClient, tmp_path: Path
) -> None:
    extra = ("--env", "coding", "--worker-memory", "1024")
    with (
        docker_broker(tmp_path, worker_image, *extra, workers=1) as broker,
        broker.client() as client,
    ):
        [worker] = live_docker_workers(client, 1)
        layers = worker["sandbox"]
        assert is_on(layers["seccomp"]) and is_on(layers["rlimits"])
        # Without root or user namespaces inside the container these are off; the
        # container's no network and pids limit stand in for netns and pids-cgroup.
        assert not is_on(layers["uid"]) and not is_on(layers["netns"])
        envs = client.make("coding", num_envs=4)
        envs.reset()
        codes = [
            "print(6 * 7)",
            "import socket\nsocket.create_connection(('1.1.1.1', 53))",
            "x = 'a' * 10**10",
            "print(sum(range(10)))",
        ]
        result = envs.step([CodeAction(code=code) for code in codes])
        assert result.errors == {}
        out = result.observations
        assert out[0].stdout == "42\n" and out[3].stdout == "45\n"
        assert "Import of socket" in out[1].stderr and "MemoryError" in out[2].stderr
    assert ours(engine) == []
