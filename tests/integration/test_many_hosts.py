"""Many hosts, played by network namespaces: a CURVE broker in one, a worker in each of two more.

Each run makes its own three namespaces, named ``oz-<pid>-<random>-broker``, ``-w1`` and ``-w2``
(ones a crashed run left, whose pid is gone, are removed first). Only they get interfaces: a
bridge in the broker's namespace, and a veth pair from it to each worker's, in a private /24
that no address or route of this host uses (``10.213.0.0/24`` unless taken)::

    oz-…-broker                                        oz-…-w1
      broker  --bind tcp://0.0.0.0:5555                  worker w1 --connect ADVERTISED
              --worker-bind tcp://0.0.0.0:5556           eth0 .2 ══╗
              --advertise tcp://<.1>:5556                          ║ veth
      client  (many_hosts_client)                      oz-…-w2     ║
      br0 .1 ─┬─ vw1 ═══════════════════════════════════════════════╝
              └─ vw2 ══════════════════ veth ═════════ eth0 .3  worker w2, and two strangers

The test process stays in the root namespace and drives a client inside the broker's through
its pipes. Taking ``vw1`` down is a cable pulled between two hosts: no process learns of it but
by silence. Root is needed; without it (or without ``ip netns``) the tests skip, unless
``OPENENV_ZMQ_REQUIRE_NETNS=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench.faults.cluster import alive, read_addresses
from broker.keys import Role, add_peer, init_keys
from tests.processes import REPO_ROOT, cli, wait_until

pytestmark = pytest.mark.integration

HEARTBEAT = 1.0
"""A whole second: the cut worker is declared dead 2.5 of them after it was last heard, and
the half interval left to the bound of 3 is the room a loaded CI machine gets for scheduling."""
LOST_WITHIN = 3 * HEARTBEAT
"""A worker cut off is declared dead, its requests in flight answered, within this."""
REJOIN_WITHIN = 15.0
"""From its link coming back to the worker registered again: TCP retransmits what waited on
either side after a backoff that grew while the link was down (measured: under a second)."""
START_WITHIN = 30.0
CALL_WITHIN = 20.0
IP_TIMEOUT = 10.0
STOP_WITHIN = 10.0
CLIENT_PORT, WORKER_PORT = 5555, 5556
"""Fixed: nothing else listens in a namespace made for this run."""
SUBNETS = tuple(
    ipaddress.IPv4Network(net) for net in ("10.213.0.0/24", "10.213.77.0/24", "198.18.213.0/24")
)
"""Where the links' addresses come from: the first of these no address or route here overlaps."""
NAME = re.compile(r"oz-(\d+)-[0-9a-f]+-(?:broker|w1|w2)")
WORKERS = ("w1", "w2")
REQUIRE = "OPENENV_ZMQ_REQUIRE_NETNS"


class Unavailable(Exception):
    """This host cannot make the namespaces or links (not root, no iproute2, no bridge)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip args...``; with ``check``, a failure raises :class:`AssertionError` with its
    stderr."""
    done = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
    )
    assert not check or done.returncode == 0, f"ip {' '.join(args)}: {done.stderr.strip()}"
    return done


def remove_namespace(name: str) -> list[int]:
    """Kill what still runs in namespace ``name`` and delete it; the pids that were killed."""
    killed = []
    for pid in ip("netns", "pids", name, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
            killed.append(int(pid))
    ip("netns", "del", name, check=False)
    return killed


def remove_stale_namespaces() -> None:
    """Namespaces of earlier runs whose test process is gone (it crashed before cleaning up)."""
    for line in ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        found = NAME.fullmatch(name)
        if found and not alive(int(found.group(1))):
            remove_namespace(name)


def networks_in_use() -> list[ipaddress.IPv4Network]:
    """The networks of this host's IPv4 addresses and routes."""
    networks = []
    for line in ip("-4", "-o", "addr", "show").stdout.splitlines():
        words = line.split()
        if "inet" in words:
            networks.append(ipaddress.IPv4Interface(words[words.index("inet") + 1]).network)
    for line in ip("-4", "route", "show", "table", "all").stdout.splitlines():
        for word in line.split()[:2]:  # "10.0.0.0/8 dev ..." or "local 10.0.0.1 dev ..."
            with contextlib.suppress(ValueError):
                networks.append(ipaddress.IPv4Network(word))
                break
    return networks


def free_subnet() -> ipaddress.IPv4Network:
    used = networks_in_use()
    for subnet in SUBNETS:
        if not any(subnet.overlaps(network) for network in used):
            return subnet
    raise Unavailable(f"every subnet the test may use overlaps one of this host's: {used}")


@dataclass
class Hosts:
    """The run's three namespaces and the links between them."""

    prefix: str
    subnet: ipaddress.IPv4Network
    made: list[str] = field(default_factory=list)

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        return str(self.subnet[1 + ("broker", *WORKERS).index(host)])

    def create(self) -> None:
        for host in ("broker", *WORKERS):
            done = ip("netns", "add", self.ns(host), check=False)
            if done.returncode != 0:
                raise Unavailable(f"ip netns add failed: {done.stderr.strip()}")
            self.made.append(self.ns(host))
            ip("-n", self.ns(host), "link", "set", "lo", "up")
        broker = self.ns("broker")
        done = ip("-n", broker, "link", "add", "br0", "type", "bridge", check=False)
        if done.returncode != 0:
            raise Unavailable(f"cannot make a bridge: {done.stderr.strip()}")
        ip("-n", broker, "addr", "add", f"{self.address('broker')}/24", "dev", "br0")
        ip("-n", broker, "link", "set", "br0", "up")
        for worker in WORKERS:
            port, ns = f"v{worker}", self.ns(worker)
            ip(
                "-n",
                broker,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            ip("-n", broker, "link", "set", port, "master", "br0")
            ip("-n", broker, "link", "set", port, "up")
            ip("-n", ns, "addr", "add", f"{self.address(worker)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")

    def link(self, worker: str, up: bool) -> None:
        """Plug (``up``) or pull the cable of ``worker``'s host: its port on the bridge."""
        ip("-n", self.ns("broker"), "link", "set", f"v{worker}", "up" if up else "down")

    def run(self, host: str, command: list[str], **popen: Any) -> subprocess.Popen[bytes]:
        """Start ``command`` inside ``host``'s namespace (``ip netns exec`` execs it: the
        process is the command itself)."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns(host), *command], **popen)

    def remove(self) -> list[int]:
        """Delete the namespaces (their links go with them); pids that had to be killed."""
        return [pid for name in self.made for pid in remove_namespace(name)]


class Client:
    """The client inside the broker's namespace: ``ask`` sends it a command, returns its answer."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self._buffer = b""
        self.greeting = self._line(START_WITHIN)

    def ask(self, op: str, timeout: float = CALL_WITHIN, **args: Any) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        self.process.stdin.flush()
        answer = self._line(timeout)
        assert not (isinstance(answer, dict) and "raised" in answer), f"{op}: {answer['raised']}"
        return answer

    def _line(self, timeout: float) -> Any:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                assert left > 0 and selector.select(left), f"the client said nothing in {timeout} s"
                chunk = os.read(fd, 65536)
                assert chunk, f"the client exited with code {self.process.wait(STOP_WITHIN)}"
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)


@dataclass
class Cluster:
    hosts: Hosts
    client: Client
    broker_log: Path
    advertised: str
    workers: dict[str, subprocess.Popen[bytes]]
    strangers: dict[str, subprocess.Popen[bytes]]


def stranger_bundles(folder: Path, broker_keys: Path) -> dict[str, Path]:
    """Worker bundles the broker does not admit: ``other-broker``, made by another ``keys init``
    (it trusts another broker's key), and ``unknown-key``, a key of that folder paired with this
    broker's public key (the handshake completes, the allowlist refuses it)."""
    init_keys(folder / "other")
    other = add_peer(folder / "other", Role.WORKER, "fleet")
    unknown = folder / "unknown-key"
    unknown.mkdir(mode=0o700)
    shutil.copy2(other / "self.key_secret", unknown / "self.key_secret")
    shutil.copy2(other / "self.key", unknown / "self.key")
    shutil.copy2(broker_keys / "broker.key", unknown / "broker.key")
    return {"other-broker": other, "unknown-key": unknown}


def worker_command(name: str, connect: str, bundle: Path) -> list[str]:
    return cli(
        "--log-level",
        "info",
        "worker",
        "--connect",
        connect,
        "--curve-dir",
        str(bundle),
        "--heartbeat",
        str(HEARTBEAT),
        "--name",
        name,
    )


def stop(process: subprocess.Popen[bytes], what: str) -> str | None:
    """Stop ``process``: the client at the end of its input, the others with SIGTERM; SIGKILL
    if that takes too long. A problem when it did not exit 0 by itself."""
    if process.stdin is not None:
        process.stdin.close()
    elif process.poll() is None:
        process.terminate()
    try:
        code = process.wait(STOP_WITHIN)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return f"{what} (pid {process.pid}) did not stop within {STOP_WITHIN} s"
    finally:
        if process.stdout is not None:
            process.stdout.close()
    return None if code == 0 else f"{what} exited with code {code}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The broker, w1, w2 and two strangers' workers, each in its namespace, and the client."""
    try:
        if os.geteuid() != 0:
            raise Unavailable("needs root: it makes network namespaces and veth links")
        if shutil.which("ip") is None:
            raise Unavailable("needs the ip command (iproute2)")
        remove_stale_namespaces()
        hosts = Hosts(f"oz-{os.getpid()}-{secrets.token_hex(3)}", free_subnet())
    except Unavailable as exc:
        if os.environ.get(REQUIRE) == "1":
            pytest.fail(f"{exc} ({REQUIRE}=1)")
        pytest.skip(str(exc))
    folder = tmp_path_factory.mktemp("many-hosts")
    keys = folder / "keys"
    init_keys(keys)
    fleet = add_peer(keys, Role.WORKER, "fleet")
    trainer = add_peer(keys, Role.CLIENT, "trainer")
    processes: list[tuple[str, subprocess.Popen[bytes]]] = []  # stopped in reverse order
    problems: list[str] = []
    try:
        try:
            hosts.create()
        except Unavailable as exc:
            if os.environ.get(REQUIRE) == "1":
                pytest.fail(f"{exc} ({REQUIRE}=1)")
            pytest.skip(str(exc))
        broker_address = hosts.address("broker")
        broker_log = folder / "broker.log"
        with broker_log.open("wb") as log:
            broker = hosts.run(
                "broker",
                cli(
                    "--log-level",
                    "info",
                    "start",
                    "--bind",
                    f"tcp://0.0.0.0:{CLIENT_PORT}",
                    "--worker-bind",
                    f"tcp://0.0.0.0:{WORKER_PORT}",
                    "--workers",
                    "0",
                    "--curve-dir",
                    str(keys),
                    "--heartbeat",
                    str(HEARTBEAT),
                    "--advertise",
                    f"tcp://{broker_address}:{WORKER_PORT}",
                ),
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=log,
                bufsize=0,
            )
        processes.append(("the broker", broker))
        frontend, advertised = read_addresses(broker, START_WITHIN)
        workers: dict[str, subprocess.Popen[bytes]] = {}
        strangers: dict[str, subprocess.Popen[bytes]] = {}
        # Each worker joins at the address the broker printed, as an operator would copy it.
        starts = [(name, name, fleet) for name in WORKERS]
        starts += [(name, "w2", bundle) for name, bundle in stranger_bundles(folder, keys).items()]
        for name, host, bundle in starts:
            with (folder / f"{name}.log").open("wb") as log:
                process = hosts.run(
                    host,
                    worker_command(name, advertised, bundle),
                    cwd=REPO_ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            (workers if name in WORKERS else strangers)[name] = process
            processes.append((f"worker {name}", process))
        client_process = hosts.run(
            "broker",
            [
                sys.executable,
                "-m",
                "tests.integration.many_hosts_client",
                f"tcp://{broker_address}:{CLIENT_PORT}",
                str(trainer),
            ],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        processes.append(("the client", client_process))
        client = Client(client_process)
        client.ask(
            "wait_for_workers", count=len(WORKERS), within=START_WITHIN, timeout=2 * START_WITHIN
        )
        assert frontend == f"tcp://0.0.0.0:{CLIENT_PORT}"
        yield Cluster(hosts, client, broker_log, advertised, workers, strangers)
    finally:
        for what, process in reversed(processes):
            problem = stop(process, what)
            if problem is not None:
                problems.append(problem)
        killed = hosts.remove()
        if killed:
            problems.append(f"processes left in the namespaces were killed: {killed}")
    assert not problems, "; ".join(problems)


def live(status: dict[str, Any], name: str) -> dict[str, Any]:
    workers: list[dict[str, Any]] = status["workers"]
    [worker] = [w for w in workers if w["name"] == name and w["state"] == "READY"]
    return worker


def test_steps_flow_to_workers_on_two_other_hosts(cluster: Cluster) -> None:
    hosts, client = cluster.hosts, cluster.client
    assert cluster.advertised == f"tcp://{hosts.address('broker')}:{WORKER_PORT}"
    client.ask("make", num_envs=8)  # placed evenly: 4 on each worker
    client.ask("reset")
    stepped = client.ask("step", message="across hosts")
    assert stepped["errors"] == {}
    assert stepped["echoed"] == ["across hosts"] * 8
    status = client.ask("status")
    assert {name: live(status, name)["used"] for name in WORKERS} == {"w1": 4, "w2": 4}
    assert {name: live(status, name)["steps_served"] for name in WORKERS} == {"w1": 4, "w2": 4}
    # Each came over its own link: the broker admitted the fleet key from that host's address.
    log = cluster.broker_log.read_text()
    for name in WORKERS:
        assert f"(fleet) from {hosts.address(name)} on openenv-workers" in log


def test_a_worker_cut_off_is_lost_within_three_heartbeats_and_rejoins_when_its_link_is_back(
    cluster: Cluster,
) -> None:
    client = cluster.client
    client.ask("make", num_envs=8)
    client.ask("reset")
    before = live(client.ask("status"), "w1")
    assert client.ask("step", message="linked")["errors"] == {}

    down_at = time.monotonic()
    cluster.hosts.link("w1", up=False)
    try:
        # w1's half of this batch is in flight until the broker gives w1 up for its silence
        cut = client.ask("step", message="cut off")
        lost_after = cut["at"] - down_at
        lost = sorted(int(env_id) for env_id in cut["errors"])
        assert set(cut["errors"].values()) == {"WorkerLost"}, cut["errors"]
        assert len(lost) == 4
        assert cut["echoed"].count("cut off") == 4  # w2's half, answered as usual
        assert lost_after <= LOST_WITHIN, f"WorkerLost {lost_after:.2f} s after the link went down"
        [dead] = [w for w in client.ask("status")["workers"] if w["id"] == before["id"]]
        assert dead["state"] == "DEAD"
        later = client.ask("step", message="later", env_ids=lost)
        assert set(later["errors"].values()) == {"SessionLost"}
    finally:
        up_at = time.monotonic()
        cluster.hosts.link("w1", up=True)

    workers = client.ask(
        "wait_for_workers", count=len(WORKERS), within=REJOIN_WITHIN, timeout=2 * REJOIN_WITHIN
    )
    rejoined_after = time.monotonic() - up_at
    [again] = [w for w in workers if w["name"] == "w1"]
    assert again["id"] != before["id"]  # a new registration: the envs it had are gone
    assert cluster.workers["w1"].poll() is None  # the same process
    back = client.ask("reset", env_ids=lost)  # re-placed on a live worker: the rejoined w1
    assert back["errors"] == {}
    stepped = client.ask("step", message="back")
    assert stepped["errors"] == {}
    assert stepped["echoed"] == ["back"] * 8
    status = client.ask("status")
    # Registered once on its return: the READYs it re-sent while cut off are one registration.
    records = [(w["id"], w["state"]) for w in status["workers"] if w["name"] == "w1"]
    assert records == [(before["id"], "DEAD"), (again["id"], "READY")], records
    assert live(status, "w1")["used"] == 4
    print(
        f"\nheartbeat {HEARTBEAT} s: link down -> WorkerLost {lost_after:.2f} s"
        f" ({lost_after / HEARTBEAT:.1f} intervals); link up -> w1 registered again"
        f" {rejoined_after:.2f} s"
    )


def test_workers_holding_a_strangers_keys_never_join_and_the_broker_logs_why(
    cluster: Cluster,
) -> None:
    stranger_address = cluster.hosts.address("w2")

    def refused() -> bool:
        log = cluster.broker_log.read_text()
        another_brokers = re.search(
            r"WARNING broker\.zap: refused a peer on openenv-workers at \S+: its CURVE"
            r" handshake failed .*another broker's key\?",
            log,
        )
        unknown = re.search(
            rf"WARNING broker\.zap: refused key \S+ from {re.escape(stranger_address)} on"
            r" openenv-workers: not in \S+/workers",
            log,
        )
        return bool(another_brokers and unknown)

    # They started with w1 and w2, and have knocked since: well past their first READY.
    wait_until(refused, 10.0, "the broker to log both refusals")
    names = {w["name"] for w in cluster.client.ask("status")["workers"]}
    assert names == set(WORKERS)
    for name, process in cluster.strangers.items():
        assert process.poll() is None, f"{name} should wait, unregistered, until stopped"
