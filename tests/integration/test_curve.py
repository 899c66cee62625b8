"""CURVE on the broker's sockets: who gets service, who is refused, and what the log says."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import zmq
from echo_env import EchoAction

from broker.core import BrokerConfig
from broker.keys import Role, add_peer, init_keys, load_broker_keys
from broker.loop import BrokerServer
from openenv_zmq import BatchClient
from openenv_zmq.curve import CurveDir, CurveKeys, load_bundle
from openenv_zmq.errors import BrokerUnreachable
from openenv_zmq.protocol import Frame, Message, Op, decode, encode
from openenv_zmq.sockets import configure, curve_client
from tests.processes import REPO_ROOT, Processes, cli, free_port, wait_until

pytestmark = pytest.mark.integration

REFUSED_WITHIN = 1.0
"""connect_timeout of a client expected to be refused: a refusal only ever looks like silence."""
JOIN_WAIT = 3.0
"""How long a refused worker is given to join (it retries READY every heartbeat of 0.5 s)."""


class Keys:
    """A broker key folder with one client key (alice) and one worker key (fleet)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        init_keys(folder)
        self.alice_bundle = add_peer(folder, Role.CLIENT, "alice")
        self.fleet_bundle = add_peer(folder, Role.WORKER, "fleet")
        self.alice = load_bundle(self.alice_bundle)
        self.fleet = load_bundle(self.fleet_bundle)

    @property
    def start(self) -> tuple[str, ...]:
        return ("--curve-dir", str(self.folder))


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "keys")


def refused(address: str, curve_dir: CurveDir | None) -> str:
    """The message of the BrokerUnreachable a client with ``curve_dir`` gets."""
    with pytest.raises(BrokerUnreachable) as caught:
        BatchClient(address, connect_timeout=REFUSED_WITHIN, curve_dir=curve_dir)
    return str(caught.value)


def logged(log: Path, *parts: str) -> bool:
    return any(all(part in line for part in parts) for line in log.read_text().splitlines())


def test_a_client_with_its_key_steps_envs_on_local_and_remote_curve_workers(
    procs: Processes, keys: Keys
) -> None:
    broker = procs.broker(workers=1, extra=keys.start, client_keys=keys.alice)
    procs.worker(broker.backend, extra=("--curve-dir", str(keys.fleet_bundle)))
    broker.wait_for_workers(2)
    with BatchClient(broker.frontend, curve_dir=keys.alice_bundle) as client:
        envs = client.make("echo", num_envs=8)  # placed evenly: 4 on each worker
        envs.reset(seed=0)
        r = envs.step([EchoAction(message=f"m{i}") for i in range(8)])
        assert not r.errors
        assert [o.echoed_message for o in r.observations] == [f"m{i}" for i in range(8)]
        assert sorted(w["used"] for w in client.workers()) == [4, 4]


def test_a_plain_client_gets_no_service_and_the_refusal_is_logged(
    procs: Processes, keys: Keys, tmp_path: Path
) -> None:
    log = tmp_path / "broker.log"
    broker = procs.broker(workers=0, extra=keys.start, client_keys=keys.alice, log=log)
    message = refused(broker.frontend, None)
    assert "CURVE" not in message  # nothing says the client should have had keys
    wait_until(
        lambda: logged(log, "WARNING", "openenv-clients", "does not use CURVE"),
        5,
        "the refusal in the broker's log",
    )


def test_a_strangers_key_gets_no_service_and_is_logged(
    procs: Processes, keys: Keys, tmp_path: Path
) -> None:
    log = tmp_path / "broker.log"
    broker = procs.broker(workers=0, extra=keys.start, client_keys=keys.alice, log=log)
    stranger = CurveKeys.generate(server=keys.alice.server)  # knows the broker, is not known
    message = refused(broker.frontend, stranger)
    assert "clients/ allowlist" in message  # the hint a refused CURVE client gets
    wait_until(
        lambda: logged(log, "WARNING", "refused key", stranger.public.decode(), "openenv-clients"),
        5,
        "the refusal naming the stranger's key",
    )
    with broker.client() as client:  # while the clients it knows are served
        assert client.status()["workers"] == []


def test_a_client_key_cannot_register_a_worker(
    procs: Processes, keys: Keys, tmp_path: Path
) -> None:
    log = tmp_path / "broker.log"
    broker = procs.broker(workers=0, extra=keys.start, client_keys=keys.alice, log=log)
    worker = procs.worker(broker.backend, extra=("--curve-dir", str(keys.alice_bundle)))
    wait_until(
        lambda: logged(log, "refused key", keys.alice.public.decode(), "openenv-workers"),
        10,
        "the refusal of a client key on the worker socket",
    )
    assert logged(log, "admitted on openenv-clients as 'alice'")
    time.sleep(JOIN_WAIT)
    assert broker.live_workers() == []
    assert worker.poll() is None  # it waits, unregistered, until stopped


def test_a_client_key_added_while_the_broker_runs_is_admitted_and_a_removed_one_refused(
    procs: Processes, keys: Keys
) -> None:
    broker = procs.broker(workers=0, extra=keys.start, client_keys=keys.alice)
    bob_bundle = add_peer(keys.folder, Role.CLIENT, "bob")  # no restart
    with BatchClient(broker.frontend, curve_dir=bob_bundle) as bob:
        assert bob.status()["workers"] == []
        (keys.folder / "clients" / "bob.key").unlink()
        assert "clients/ allowlist" in refused(broker.frontend, bob_bundle)
        # a removed key refuses new connections; one already open keeps its session
        assert bob.status()["workers"] == []


def test_the_core_is_given_each_client_messages_key(keys: Keys) -> None:
    server = BrokerServer(
        "tcp://127.0.0.1:*",
        "tcp://127.0.0.1:*",
        BrokerConfig(),
        curve=load_broker_keys(keys.folder),
    )
    seen: list[str | None] = []
    on_client = server.core.on_client

    def spy(client: bytes, frames: list[Frame], now: float, key: str | None = None) -> object:
        seen.append(key)
        return on_client(client, frames, now, key=key)

    server.core.on_client = spy  # type: ignore[method-assign,assignment]
    server.bind()
    thread = threading.Thread(target=server.run, name="broker", daemon=True)
    thread.start()
    try:
        with BatchClient(server.frontend_address, curve_dir=keys.alice) as client:
            client.status()
    finally:
        server.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert seen and set(seen) == {keys.alice.public.decode()}


def test_start_with_keys_serves_its_gateway_over_curve(procs: Processes, keys: Keys) -> None:
    port = free_port()
    procs.broker(
        workers=1, extra=(*keys.start, "--gateway-port", str(port)), client_keys=keys.alice
    )

    def reset() -> dict[str, object]:
        ask = urllib.request.Request(
            f"http://127.0.0.1:{port}/reset",
            data=b"{}",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(ask, timeout=10) as reply:
            answer: dict[str, object] = json.load(reply)
            return answer

    def answers() -> bool:
        try:
            return bool(reset())
        except OSError:
            return False

    wait_until(answers, 60, "the gateway to answer through the CURVE broker")
    assert reset()["observation"] == {
        "echoed_message": "Echo environment ready!",
        "message_length": 0,
        "metadata": {},
    }


def test_status_and_bench_take_a_bundle(procs: Processes, keys: Keys) -> None:
    broker = procs.broker(workers=1, extra=keys.start, client_keys=keys.alice)
    bundle = ("--curve-dir", str(keys.alice_bundle))
    done = subprocess.run(
        cli("status", "--connect", broker.frontend, "--json", *bundle),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert [w["name"] for w in json.loads(done.stdout)["workers"]] == ["local-0"]
    args = ("--connect", broker.frontend, "--num-envs", "8", "--duration", "0.3", "--json")
    done = subprocess.run(
        cli("bench", *args, *bundle), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["env_steps"] > 0
    plain = subprocess.run(
        cli("status", "--connect", broker.frontend, "--timeout", "0.5"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert plain.returncode == 1 and "BrokerUnreachable" in plain.stdout


# ---------------------------------------------------------------------- the command line


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    return line


def test_keys_init_and_add_make_a_folder_and_bundles(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    made = run("keys", "init", str(folder))
    assert made.returncode == 0, made.stderr
    assert "openenv-broker start --curve-dir" in made.stdout
    added = run("keys", "add", str(folder), "--client", "alice")
    assert added.returncode == 0, added.stderr
    bundle = folder / "bundles" / "clients" / "alice"
    assert f"--curve-dir {bundle}" in added.stdout
    assert load_bundle(bundle).server == load_broker_keys(folder).public
    assert run("keys", "add", str(folder), "--worker", "fleet").returncode == 0
    assert (folder / "workers" / "fleet.key").is_file()


def test_keys_refusals_are_one_line_and_exit_2(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    assert run("keys", "init", str(folder)).returncode == 0
    assert run("keys", "add", str(folder), "--client", "alice").returncode == 0
    assert "already holds a broker key" in error_line(run("keys", "init", str(folder)))
    again = error_line(run("keys", "add", str(folder), "--client", "alice"))
    assert "'alice' exists already" in again
    both = error_line(run("keys", "add", str(folder), "--client", "a", "--worker", "b"))
    assert "--client NAME or --worker NAME" in both
    assert "keys init" in error_line(run("keys", "add", str(tmp_path), "--worker", "w"))
    assert "cannot name a key" in error_line(run("keys", "add", str(folder), "--client", "../x"))


def test_a_curve_dir_that_is_not_a_bundle_is_a_usage_error(keys: Keys) -> None:
    line = error_line(run("worker", "--connect", "tcp://127.0.0.1:9", *keys.start))
    assert "'--curve-dir'" in line and "the broker's own key folder" in line
    line = error_line(run("start", "--curve-dir", str(keys.alice_bundle)))
    assert "'--curve-dir'" in line and "keys init" in line


@pytest.mark.parametrize(
    ("option", "address"),
    [("--bind", "tcp://0.0.0.0:0"), ("--worker-bind", "tcp://*:0")],
)
def test_start_refuses_an_address_other_hosts_reach_without_keys(option: str, address: str) -> None:
    line = error_line(run("start", "--workers", "0", option, address))
    assert f"{option} {address}" in line
    assert "--curve-dir" in line and "--insecure" in line


def test_start_binds_an_address_other_hosts_reach_when_told_insecure(
    procs: Processes, tmp_path: Path
) -> None:
    log = tmp_path / "broker.log"
    broker = procs.broker(workers=0, bind="tcp://0.0.0.0:0", extra=("--insecure",), log=log)
    assert broker.frontend.startswith("tcp://0.0.0.0:")
    assert logged(log, "WARNING", "admits any peer", "--insecure")
    assert broker.stop() == 0


def test_start_binds_any_address_with_keys(procs: Processes, keys: Keys) -> None:
    broker = procs.broker(
        workers=0, bind="tcp://0.0.0.0:0", extra=keys.start, client_keys=keys.alice
    )
    port = broker.frontend.rpartition(":")[2]
    with BatchClient(f"tcp://127.0.0.1:{port}", curve_dir=keys.alice) as client:
        assert client.status()["workers"] == []


def test_a_missing_ipc_folder_is_made_private(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "openenv"
    server = BrokerServer(f"ipc://{folder}/front.sock", f"ipc://{folder}/back.sock")
    server.bind()
    try:
        assert (folder / "front.sock").exists()
        assert [(p.stat().st_mode & 0o777) for p in (folder.parent, folder)] == [0o700, 0o700]
    finally:
        server.close()
    assert not any(folder.iterdir())


def test_a_session_token_is_no_use_to_another_clients_key(procs: Processes, keys: Keys) -> None:
    """An eavesdropper's view: bob holds alice's session token (as if seen on a plain wire), and
    his own admitted key; the broker bound the session to alice's key."""
    bob = load_bundle(add_peer(keys.folder, Role.CLIENT, "bob"))
    broker = procs.broker(workers=1, extra=keys.start, client_keys=keys.alice)
    with BatchClient(broker.frontend, curve_dir=keys.alice_bundle) as alice:
        envs = alice.make("echo", num_envs=2)
        envs.reset()
        token = alice._transport.session
        worker = int(alice.workers()[0]["id"])
        socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        curve_client(configure(socket), bob)
        socket.connect(broker.frontend)
        try:
            step = Message(
                Op.STEP,
                1,
                worker=worker,
                env_ids=envs.env_ids,
                group=int(envs.env_ids.min()),
                session=token,
                parts={"actions": [{}, {}]},
            )
            socket.send_multipart(encode(step))
            assert socket.poll(10_000), "bob's key is admitted: he gets an answer"
            answer = decode(socket.recv_multipart())
        finally:
            socket.close(linger=0)
        assert answer.op is Op.ERROR
        assert answer.meta["type"] == "NotOwner"
        assert "belongs to another client key" in answer.meta["message"]
        assert [s.step_count for s in envs.state()] == [0, 0]
        assert not envs.step([EchoAction(message="still alice's")] * 2).errors
