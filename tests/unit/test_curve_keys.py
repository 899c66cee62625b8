"""The broker's key folder and the bundles given to peers: layout, permissions, refusals."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import zmq.auth

from broker.keys import Role, add_peer, init_keys, load_broker_keys
from openenv_zmq.curve import CurveKeys, client_keys, load_bundle, make_private_dir
from openenv_zmq.errors import CurveKeyError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    init_keys(path)
    return path


def test_init_makes_a_private_folder_with_the_brokers_keypair_and_empty_allowlists(
    folder: Path,
) -> None:
    assert sorted(p.name for p in folder.iterdir()) == [
        "broker.key",
        "broker.key_secret",
        "bundles",
        "clients",
        "workers",
    ]
    folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
    assert {mode(p) for p in folders} == {0o700}
    assert mode(folder / "broker.key_secret") == 0o600
    assert not any((folder / "clients").iterdir()) and not any((folder / "workers").iterdir())
    public, secret = zmq.auth.load_certificate(folder / "broker.key_secret")
    assert zmq.auth.load_certificate(folder / "broker.key") == (public, None)
    assert secret is not None and zmq.curve_public(secret) == public


def test_init_refuses_to_overwrite_a_broker_key(folder: Path) -> None:
    before = (folder / "broker.key_secret").read_bytes()
    with pytest.raises(CurveKeyError, match="already holds a broker key"):
        init_keys(folder)
    assert (folder / "broker.key_secret").read_bytes() == before


@pytest.mark.parametrize("role", list(Role))
def test_a_bundle_holds_the_peers_keypair_and_the_brokers_public_key_only(
    folder: Path, role: Role
) -> None:
    bundle = add_peer(folder, role, "peer-1")
    assert bundle == folder / "bundles" / role.folder / "peer-1"
    assert sorted(p.name for p in bundle.iterdir()) == ["broker.key", "self.key", "self.key_secret"]
    assert mode(bundle) == 0o700 and mode(bundle / "self.key_secret") == 0o600
    _, broker_secret = zmq.auth.load_certificate(folder / "broker.key_secret")
    assert broker_secret is not None
    for file in bundle.iterdir():
        assert broker_secret not in file.read_bytes(), file
    keys = load_bundle(bundle)
    broker_public, _ = zmq.auth.load_certificate(folder / "broker.key")
    assert keys.server == broker_public
    assert zmq.curve_public(keys.secret) == keys.public
    # admitted in its own role's allowlist, and only there; readable by pyzmq's own loader
    assert zmq.auth.load_certificates(folder / role.folder) == {keys.public: True}
    other = Role.WORKER if role is Role.CLIENT else Role.CLIENT
    assert zmq.auth.load_certificates(folder / other.folder) == {}


def test_add_refuses_a_name_already_taken_in_that_role(folder: Path) -> None:
    add_peer(folder, Role.CLIENT, "alice")
    allowlisted = (folder / "clients" / "alice.key").read_bytes()
    with pytest.raises(CurveKeyError, match="'alice' exists already"):
        add_peer(folder, Role.CLIENT, "alice")
    assert (folder / "clients" / "alice.key").read_bytes() == allowlisted
    add_peer(folder, Role.WORKER, "alice")  # a worker key of the same name is another key


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a/b", "../up", "a b", "x" * 65])
def test_add_refuses_a_name_that_is_not_a_plain_file_name(folder: Path, name: str) -> None:
    with pytest.raises(CurveKeyError, match="cannot name a key"):
        add_peer(folder, Role.CLIENT, name)
    assert not any((folder / "clients").iterdir())


def test_add_without_a_broker_key_says_to_init_first(tmp_path: Path) -> None:
    with pytest.raises(CurveKeyError, match="keys init"):
        add_peer(tmp_path, Role.WORKER, "fleet")


def test_the_brokers_own_folder_is_not_a_bundle(folder: Path) -> None:
    with pytest.raises(CurveKeyError, match="the broker's own key folder"):
        load_bundle(folder)


def test_a_bundle_missing_a_file_names_it(folder: Path) -> None:
    bundle = add_peer(folder, Role.CLIENT, "alice")
    (bundle / "broker.key").unlink()
    with pytest.raises(CurveKeyError, match=r"no broker\.key"):
        load_bundle(bundle)


def test_a_malformed_key_is_refused_with_its_file(folder: Path) -> None:
    bundle = add_peer(folder, Role.CLIENT, "alice")
    (bundle / "broker.key").write_text('curve\n    public-key = "tooshort"\n')
    with pytest.raises(CurveKeyError, match=r"broker\.key holds no valid CURVE key"):
        load_bundle(bundle)


def test_a_secret_readable_by_others_is_loaded_with_a_warning(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = add_peer(folder, Role.WORKER, "fleet")
    (bundle / "self.key_secret").chmod(0o644)  # as a Kubernetes secret is mounted by default
    with caplog.at_level(logging.WARNING):
        load_bundle(bundle)
    assert "mode 0644: make it 0600" in caplog.text


def test_broker_keys_give_fresh_keys_to_the_peers_it_starts_itself(folder: Path) -> None:
    first, second = load_broker_keys(folder), load_broker_keys(folder)
    assert first.public == second.public and first.secret == second.secret
    assert first.local_worker.server == first.public == first.local_client.server
    fresh = {first.local_worker.public, first.local_client.public, second.local_worker.public}
    assert len(fresh) == 3
    shown = repr(first)
    assert first.secret.decode() not in shown and first.local_worker.secret.decode() not in shown


def test_broker_keys_need_the_secret_and_both_allowlists(folder: Path) -> None:
    (folder / "workers").rmdir()
    with pytest.raises(CurveKeyError, match="no workers/ allowlist"):
        load_broker_keys(folder)
    with pytest.raises(CurveKeyError, match="keys init"):
        load_broker_keys(folder / "clients")


def test_an_allowlist_others_may_write_to_is_warned_about(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (folder / "clients").chmod(0o777)
    with caplog.at_level(logging.WARNING):
        load_broker_keys(folder)
    assert "clients is writable by other users" in caplog.text


def test_an_allowlist_on_a_read_only_mount_is_not_warned_about(
    folder: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as a Kubernetes Secret volume may be: mode 1777, but mounted read-only, so nobody may write
    (folder / "clients").chmod(0o1777)
    statvfs = os.statvfs

    def read_only(path: Any) -> Any:
        found = statvfs(path)
        return SimpleNamespace(f_flag=found.f_flag | os.ST_RDONLY)

    monkeypatch.setattr(os, "statvfs", read_only)
    with caplog.at_level(logging.WARNING):
        load_broker_keys(folder)
    assert "writable" not in caplog.text


def test_client_keys_take_a_bundle_folder_or_loaded_keys(folder: Path) -> None:
    bundle = add_peer(folder, Role.CLIENT, "alice")
    keys = load_bundle(bundle)
    assert client_keys(bundle) == keys == client_keys(str(bundle))
    assert client_keys(keys) is keys
    assert client_keys(None) is None
    assert isinstance(keys, CurveKeys)


def test_private_folders_are_made_0700_at_every_missing_level(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    made = make_private_dir(tmp_path / "a" / "b" / "c")
    assert made.is_dir()
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", made)] == [0o700] * 3
    assert mode(tmp_path) == 0o755  # what existed is left alone
