"""Workers as Ray actors (:class:`broker.providers.ray.RayProvider`) on a local multi-node Ray
cluster made with Ray's own test utility (:class:`ray.cluster_utils.Cluster`).

One cluster serves the module: a head with no CPUs, so that no worker lands on it, and three
nodes of one CPU each: two for the workers (one actor a CPU), the third a spare for the
replacement when a node is removed. Every node binds 127.0.0.1. The broker runs in this process
(a :class:`BrokerServer` in a thread), so this process is the Ray driver, as the broker's is.
Starting the cluster takes 10 to 15 s on 2 cores: it is done in the fixture, outside the
per-test timeout.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from echo_env import EchoAction

from bench.faults.cluster import python, read_addresses
from bench.ray_cluster import local_ray_cluster
from broker.core import BrokerConfig
from broker.loop import BrokerServer
from broker.providers.ray import RayProvider, ray_preflight
from broker.providers.slots import MAX_QUICK_DEATHS
from openenv_zmq import BatchClient
from openenv_zmq.errors import ProviderUnavailable, SessionLost, WorkerLost, WorkersFailing
from tests.processes import REPO_ROOT, cli, free_port, wait_until

# The module's cluster starts in the first test's setup: the timeouts count the test alone.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(60, func_only=True)]

HEARTBEAT = 0.5
SLOW = "tests.integration.fixture_envs:SlowEchoEnv"
START_WITHIN = 60.0
"""From the broker's start to its Ray workers live: the first actors start Ray worker processes
(about 2 s each on 2 cores)."""
REPLACED_WITHIN = 30.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """The running cluster (a :class:`ray.cluster_utils.Cluster`), removed at the end."""
    with local_ray_cluster(nodes=3, cpus_per_node=1) as cluster:
        import ray

        assert ray.util.get_node_ip_address() == "127.0.0.1", (  # type: ignore[no-untyped-call]
            "Ray was imported before this module set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
        )
        yield cluster


@contextlib.contextmanager
def broker_with(provider: RayProvider) -> Iterator[BrokerServer]:
    """A broker routing in a thread, its workers started by ``provider``; stopped at the end,
    which must stop the actors and disconnect from Ray."""
    server = BrokerServer(
        "tcp://127.0.0.1:*",
        "tcp://127.0.0.1:*",
        BrokerConfig(heartbeat_interval=HEARTBEAT),
        provider,
    )
    server.bind()
    thread = threading.Thread(target=server.run, name="broker", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(30)
    assert not thread.is_alive(), "the broker did not stop"
    import ray

    assert not ray.is_initialized(), "the provider left this process connected to Ray"


def ray_workers(client: BatchClient) -> list[dict[str, Any]]:
    return [w for w in client.workers() if w.get("provider") == "ray"]


@pytest.mark.timeout(120, func_only=True)
def test_workers_on_two_nodes_step_and_a_removed_node_is_replaced_on_the_spare(
    cluster: Any,
) -> None:
    provider = RayProvider(
        2, address=cluster.address, envs=["echo", SLOW], heartbeat_interval=HEARTBEAT
    )
    nodes = {node.node_id: node for node in cluster.worker_nodes}
    with broker_with(provider) as server, BatchClient(server.frontend_address) as client:
        client.wait_for_workers(2, timeout=START_WITHIN)
        workers = ray_workers(client)
        assert len(workers) == 2, client.status()["workers"]
        assert sorted(w["name"] for w in workers) == ["ray-0", "ray-1"]
        # Each worker names its actor, and the actors sit on two different nodes (SPREAD).
        assert all(len(w["instance"]) == 32 for w in workers), workers
        assert len({w["instance"] for w in workers}) == 2
        wait_until(lambda: len(provider.nodes()) == 2, 10, "both actors' nodes")
        placed = provider.nodes()
        assert len(set(placed.values())) == 2 and set(placed.values()) <= set(nodes), placed

        # Steps flow through both nodes.
        envs = client.make(SLOW, num_envs=8, delay=0.2)  # 4 envs a worker: 0.8 s a sub-batch
        assert not envs.reset().errors
        assert sorted(w["used"] for w in ray_workers(client)) == [4, 4]
        r = envs.step([EchoAction(message=f"m{i}") for i in range(8)])
        assert not r.errors, r.errors
        assert [o.echoed_message for o in r.observations] == [f"m{i}" for i in range(8)]

        # Remove the node of ray-0 while both sub-batches are in flight.
        victim = next(w for w in ray_workers(client) if w["name"] == "ray-0")
        envs.send([EchoAction(message="hi")] * 8)
        wait_until(lambda: client.status()["in_flight"] == 2, 5, "both sub-batches in flight")
        removed_at = time.monotonic()
        cluster.remove_node(nodes[placed["ray-0"]])
        answered: dict[int, float] = {}
        results = []
        while len(answered) < 8:
            r = envs.recv(timeout=10)
            results.append(r)
            answered |= {i: time.monotonic() - removed_at for i in r.env_ids.tolist()}
        lost = sorted(i for r in results for i, e in r.errors.items() if isinstance(e, WorkerLost))
        assert len(lost) == 4, [r.errors for r in results]
        assert all(not r.errors.keys() - set(lost) for r in results), "only ray-0's envs fail"
        assert max(answered[i] for i in lost) < 3 * HEARTBEAT, answered

        r = envs.step([EchoAction(message="again")] * 4, env_ids=lost)
        assert {type(e) for e in r.errors.values()} == {SessionLost}

        # A new actor takes ray-0's place, on the spare node (the other one is full).
        wait_until(
            lambda: any(w["name"] == "ray-0.1" for w in ray_workers(client)),
            REPLACED_WITHIN,
            "the replacement worker",
        )
        replacement = next(w for w in ray_workers(client) if w["name"] == "ray-0.1")
        assert replacement["instance"] != victim["instance"]
        wait_until(lambda: "ray-0.1" in provider.nodes(), 10, "the replacement's node")
        spare = set(nodes) - set(placed.values())
        assert provider.nodes()["ray-0.1"] in spare, (provider.nodes(), spare)
        assert victim["id"] not in {w["id"] for w in client.workers()}

        assert not envs.reset(env_ids=lost).errors
        r = envs.step([EchoAction(message="back")] * 8)
        assert not r.errors, r.errors
        assert {o.echoed_message for o in r.observations} == {"back"}


@pytest.mark.timeout(60, func_only=True)
def test_workers_that_keep_failing_are_given_up_and_poll_says_so(cluster: Any) -> None:
    # Every actor's worker fails at once (its env does not resolve): replaced after 0.5, 1, 2
    # and 4 s, then given up, as local workers are.
    provider = RayProvider(1, address=cluster.address, envs=["no_such_env_anywhere"])
    provider.start("tcp://127.0.0.1:1")
    ended: list[bytes] = []

    def poll_until_it_raises() -> None:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            ended.extend(provider.poll())
            time.sleep(0.05)

    try:
        with pytest.raises(WorkersFailing, match="every ray worker died") as failing:
            poll_until_it_raises()
    finally:
        provider.stop()
    assert "no_such_env_anywhere" in str(failing.value)
    # Each actor had an identity of its own; the last one's end comes with the raise, as a
    # local worker's does.
    assert len(set(ended)) == len(ended) == MAX_QUICK_DEATHS - 1, ended
    assert [i.split(b"-")[1] for i in ended] == [b"0", b"0.1", b"0.2", b"0.3"]


def test_preflight_refuses_what_is_no_address() -> None:
    with pytest.raises(ProviderUnavailable, match="no Ray address"):
        ray_preflight("head-node")


def test_preflight_refuses_an_address_where_no_cluster_is_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match=r"no Ray cluster answers at 127\.0\.0\.1:"):
        ray_preflight(f"127.0.0.1:{free_port()}")
    assert time.monotonic() - started < 5


def test_preflight_refuses_something_that_is_not_ray_within_its_timeout() -> None:
    # A TCP listener that never speaks: connecting succeeds, Ray's handshake never does.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable, match=re.escape(f"127.0.0.1:{port}")):
            ray_preflight(f"127.0.0.1:{port}", timeout=5)
        assert time.monotonic() - started < 9


def test_preflight_accepts_the_cluster(cluster: Any) -> None:
    assert ray_preflight(cluster.address) == cluster.address


def test_preflight_auto_with_no_cluster_recorded_names_ray_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    with pytest.raises(ProviderUnavailable, match="ray start --head"):
        ray_preflight("auto")


def test_a_provider_that_cannot_reach_ray_raises_before_starting_anything() -> None:
    provider = RayProvider(1, address=f"127.0.0.1:{free_port()}", envs=["echo"])
    with pytest.raises(ProviderUnavailable):
        provider.start("tcp://127.0.0.1:1")
    provider.stop()  # nothing to stop: no error
    assert provider.poll() == []


def test_no_ray_package_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    with pytest.raises(ProviderUnavailable, match=r"pip install 'openenv-zmq\[ray\]'"):
        ray_preflight("auto")


@pytest.mark.timeout(90, func_only=True)
def test_start_provider_ray_serves_and_stops_on_sigterm(cluster: Any) -> None:
    # Ray's core replaces the driver's SIGTERM handler with one that ends the process: the
    # broker must still stop its actors and say so.
    args = ["--log-level", "INFO", "start", "--provider", "ray", "--workers", "1"]
    args += ["--ray-address", cluster.address, "--bind", f"tcp://127.0.0.1:{free_port()}"]
    args += ["--worker-bind", f"tcp://127.0.0.1:{free_port()}"]
    # The cluster keeps RAY_ENV in this process's environment, which the broker inherits.
    process = python("-m", "broker", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        frontend, _ = read_addresses(process, START_WITHIN)
        with BatchClient(frontend) as client:
            wait_until(lambda: len(ray_workers(client)) == 1, START_WITHIN, "a ray worker")
            envs = client.make("echo", num_envs=4)
            envs.reset()
            assert envs.step([EchoAction(message="hi")] * 4).errors == {}
            envs.close()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err.decode(errors="replace")
    assert b"broker stopped" in out and b"SIGTERM received" not in err


def test_start_provider_ray_without_a_cluster_is_one_line_and_exit_code_2() -> None:
    args = cli("start", "--provider", "ray", "--ray-address", f"127.0.0.1:{free_port()}")
    done = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    [error] = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert "no Ray cluster answers" in error and "ray start --head" in error
    assert "Traceback" not in done.stderr
