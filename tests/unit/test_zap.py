"""ZAP decisions without sockets: allowlists re-read as files change, one domain per role,
refusals logged with their key and domain, and logged once per kind while they repeat."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import zmq
from zmq.utils import z85

from broker.keys import Role, add_peer, init_keys, load_broker_keys
from broker.zap import (
    DOMAINS,
    MAX_NEW_KINDS,
    MAX_REMEMBERED,
    Allowlist,
    Gatekeeper,
    RepeatLimiter,
    gatekeeper_for,
)
from openenv_zmq.curve import load_bundle, write_public

CLIENTS, WORKERS = DOMAINS[Role.CLIENT], DOMAINS[Role.WORKER]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def request(domain: str, key: bytes, mechanism: bytes = b"CURVE") -> list[bytes]:
    """A ZAP request as libzmq sends it for a peer presenting the z85 ``key``."""
    credentials = [z85.decode(key)] if mechanism == b"CURVE" else []
    return [b"1.0", b"7", domain.encode(), b"10.0.0.9", b"", mechanism, *credentials]


def status(answer: list[bytes]) -> tuple[bytes, bytes]:
    version, request_id, code, _text, user_id, metadata = answer
    assert (version, request_id, metadata) == (b"1.0", b"7", b"")
    return code, user_id


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    init_keys(tmp_path / "keys")
    return tmp_path / "keys"


def test_allowlist_follows_its_folder_as_files_come_and_go(folder: Path) -> None:
    allowlist = Allowlist(folder / "clients")
    public, _ = zmq.curve_keypair()
    assert allowlist.name_of(public) is None
    entry = write_public(folder / "clients", "bob", public, {})
    assert allowlist.name_of(public) == "bob"
    entry.unlink()
    assert allowlist.name_of(public) is None


def test_allowlist_sees_a_file_replaced_in_place(folder: Path) -> None:
    allowlist = Allowlist(folder / "clients")
    first, _ = zmq.curve_keypair()
    second, _ = zmq.curve_keypair()
    entry = write_public(folder / "clients", "bob", first, {})
    assert allowlist.name_of(first) == "bob"
    text = entry.read_text().replace(first.decode(), second.decode())
    entry.write_text(text)
    os.utime(entry, ns=(1, 1))  # a new mtime even on a coarse clock
    assert allowlist.name_of(second) == "bob" and allowlist.name_of(first) is None


def test_allowlist_skips_what_is_not_a_key(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    public, _ = zmq.curve_keypair()
    write_public(folder / "clients", "good", public, {})
    (folder / "clients" / "broken.key").write_text("not a certificate\n")
    (folder / "clients" / "notes.txt").write_text("ignored: not a .key file\n")
    with caplog.at_level(logging.WARNING):
        assert Allowlist(folder / "clients").name_of(public) == "good"
    assert "broken.key" in caplog.text and "notes.txt" not in caplog.text


def test_allowlist_of_a_missing_folder_admits_only_its_extra_keys(tmp_path: Path) -> None:
    extra, _ = zmq.curve_keypair()
    other, _ = zmq.curve_keypair()
    allowlist = Allowlist(tmp_path / "gone", {extra: "local"})
    assert allowlist.name_of(extra) == "local"
    assert allowlist.name_of(other) is None


def test_admitted_client_gets_its_key_as_user_id(folder: Path) -> None:
    alice = load_bundle(add_peer(folder, Role.CLIENT, "alice"))
    gatekeeper = gatekeeper_for(load_broker_keys(folder))
    assert status(gatekeeper.answer(request(CLIENTS, alice.public))) == (b"200", alice.public)


def test_a_key_is_admitted_only_in_its_roles_domain(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alice = load_bundle(add_peer(folder, Role.CLIENT, "alice"))
    fleet = load_bundle(add_peer(folder, Role.WORKER, "fleet"))
    gatekeeper = gatekeeper_for(load_broker_keys(folder))
    with caplog.at_level(logging.WARNING, logger="broker.zap"):
        assert status(gatekeeper.answer(request(WORKERS, alice.public))) == (b"400", b"")
        assert status(gatekeeper.answer(request(CLIENTS, fleet.public))) == (b"400", b"")
    assert status(gatekeeper.answer(request(WORKERS, fleet.public)))[0] == b"200"
    [as_worker, as_client] = [r.getMessage() for r in caplog.records]
    assert alice.public.decode() in as_worker and WORKERS in as_worker
    assert f"admitted on {CLIENTS} as 'alice'" in as_worker
    assert fleet.public.decode() in as_client and f"on {WORKERS} as 'fleet'" in as_client


def test_the_brokers_own_peers_are_admitted_in_their_domain_only(folder: Path) -> None:
    keys = load_broker_keys(folder)
    gatekeeper = gatekeeper_for(keys)
    local_worker, local_client = keys.local_worker.public, keys.local_client.public
    assert status(gatekeeper.answer(request(WORKERS, local_worker)))[0] == b"200"
    assert status(gatekeeper.answer(request(CLIENTS, local_client)))[0] == b"200"
    assert status(gatekeeper.answer(request(CLIENTS, local_worker)))[0] == b"400"
    assert status(gatekeeper.answer(request(WORKERS, local_client)))[0] == b"400"


def test_the_worker_containers_key_is_admitted_over_ipc_only(folder: Path) -> None:
    # Sessions in a container can read its key file: over TCP it must admit nobody.
    gatekeeper = gatekeeper_for(keys := load_broker_keys(folder))
    key = keys.container_worker.public
    over_ipc = request(WORKERS, key)
    over_ipc[3] = b"localhost:1000:1000:4242"  # what libzmq names an ipc:// peer by
    assert status(gatekeeper.answer(over_ipc)) == (b"200", key)
    for address in (b"127.0.0.1", b"10.0.0.9", b"::1"):
        over_tcp = request(WORKERS, key)
        over_tcp[3] = address
        assert status(gatekeeper.answer(over_tcp))[0] == b"400"
    assert status(gatekeeper.answer(request(CLIENTS, key)))[0] == b"400"
    # The other workers' keys are not bound to a transport.
    assert status(gatekeeper.answer(request(WORKERS, keys.local_worker.public)))[0] == b"200"


def test_a_stranger_is_refused_and_logged_with_its_key_and_domain(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stranger, _ = zmq.curve_keypair()
    gatekeeper = gatekeeper_for(load_broker_keys(folder))
    with caplog.at_level(logging.WARNING, logger="broker.zap"):
        assert status(gatekeeper.answer(request(CLIENTS, stranger)))[0] == b"400"
    [line] = caplog.records
    assert line.levelno == logging.WARNING
    message = line.getMessage()
    assert stranger.decode() in message and CLIENTS in message and "10.0.0.9" in message
    assert str(folder / "clients") in message


def test_a_repeated_refusal_is_logged_once_then_counted(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    keys = load_broker_keys(folder)
    gatekeeper = gatekeeper_for(keys)
    gatekeeper.limiter = RepeatLimiter(60.0, clock)
    stranger, _ = zmq.curve_keypair()
    with caplog.at_level(logging.WARNING, logger="broker.zap"):
        for _ in range(5):  # a refused peer reconnects every 100 ms
            gatekeeper.answer(request(CLIENTS, stranger))
            clock.now += 0.1
        assert len(caplog.records) == 1
        clock.now += 60
        gatekeeper.answer(request(CLIENTS, stranger))
    assert len(caplog.records) == 2
    assert "4 more like it in the last 60 s" in caplog.records[1].getMessage()


def test_the_limiter_forgets_old_kinds_instead_of_growing() -> None:
    clock = Clock()
    limiter = RepeatLimiter(60.0, clock)
    for kind in range(MAX_REMEMBERED):
        clock.now = kind // MAX_NEW_KINDS * 60.0  # a fresh interval every MAX_NEW_KINDS kinds
        assert limiter.check(kind) == 0
    assert len(limiter._seen) == MAX_REMEMBERED
    clock.now += 61.0
    assert limiter.check("new") == 0
    assert len(limiter._seen) == 1


def test_new_kinds_past_the_cap_are_held_back_and_counted_in_the_next_line() -> None:
    clock = Clock()
    limiter = RepeatLimiter(60.0, clock)
    for kind in range(MAX_NEW_KINDS):
        assert limiter.check(kind) == 0
    for kind in range(MAX_NEW_KINDS, MAX_NEW_KINDS + 5):
        assert limiter.check(kind) is None
    clock.now = 61.0
    assert limiter.check("next") == 5
    assert limiter.check("after") == 0


def test_anything_but_curve_on_a_known_domain_is_refused(folder: Path) -> None:
    gatekeeper = gatekeeper_for(load_broker_keys(folder))
    alice = load_bundle(add_peer(folder, Role.CLIENT, "alice"))
    assert status(gatekeeper.answer(request(CLIENTS, b"", mechanism=b"NULL")))[0] == b"400"
    assert status(gatekeeper.answer(request("elsewhere", alice.public)))[0] == b"400"


def test_a_malformed_request_gets_an_error_reply() -> None:
    gatekeeper = Gatekeeper({})
    assert gatekeeper.answer([b"2.0", b"7"])[:3] == [b"1.0", b"7", b"500"]


def test_handshake_failures_name_what_the_monitor_saw(caplog: pytest.LogCaptureFixture) -> None:
    gatekeeper = Gatekeeper({})
    endpoint = "tcp://0.0.0.0:5555"
    with caplog.at_level(logging.INFO, logger="broker.zap"):
        gatekeeper.handshake_failed(
            CLIENTS,
            endpoint,
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
            zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH,
        )
        gatekeeper.handshake_failed(
            CLIENTS, endpoint, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, 0x11000001
        )
        gatekeeper.handshake_failed(CLIENTS, endpoint, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 32)
    plain, crypto, broken = caplog.records
    assert plain.levelno == logging.WARNING and "does not use CURVE" in plain.getMessage()
    assert CLIENTS in plain.getMessage() and endpoint in plain.getMessage()
    assert crypto.levelno == logging.WARNING and "another broker's key" in crypto.getMessage()
    assert broken.levelno == logging.INFO  # also what a port scan looks like
