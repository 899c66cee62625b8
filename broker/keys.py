"""The broker's CURVE key folder: its keypair, the allowlists, and the bundles written for peers.

``openenv-broker keys init DIR`` and ``keys add DIR --client NAME | --worker NAME`` make it::

    DIR/                     mode 0700, as is every folder here
      broker.key             the broker's public key
      broker.key_secret      the broker's secret key (mode 0600): it never leaves this folder
      clients/NAME.key       allowlist of the frontend: one public key per admitted client key
      workers/NAME.key       allowlist of the backend: one public key per admitted worker key
      bundles/clients/NAME/  what the client NAME is given (see :mod:`openenv_zmq.curve`)
      bundles/workers/NAME/  what the workers sharing the key NAME are given

The allowlists hold keys, not hosts: an autoscaled fleet of workers may share one key, and a
new replica needs nothing added. The broker re-reads them when they change
(:class:`broker.zap.Allowlist`), so adding or removing a ``.key`` file admits or refuses that key
from the next connection on, without a restart. A peer may also make its own keypair and hand in
only ``NAME.key``; nothing here needs its secret after the bundle is written.

Workers and a gateway that ``start`` runs itself get keys made afresh each time the broker starts
(:attr:`BrokerKeys.local_worker`, :attr:`BrokerKeys.local_client`), admitted in memory only:
nothing is written for them and nothing outlives the broker. Its worker containers get a key of
their own (:attr:`BrokerKeys.container_worker`), written for them into a 0700 folder the broker
removes (or, after ``kill -9``, its next start), and admitted over ``ipc://`` only.
"""

from __future__ import annotations

import enum
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from openenv_zmq.curve import (
    BROKER,
    PUBLIC_SUFFIX,
    SECRET_SUFFIX,
    CurveKeys,
    check_name,
    make_private_dir,
    read_keypair,
    read_public,
    write_bundle,
    write_public,
    write_secret,
)
from openenv_zmq.errors import CurveKeyError

log = logging.getLogger(__name__)

BUNDLES = "bundles"


class Role(enum.StrEnum):
    """Whom a key is for; each role has its own allowlist and ZAP domain."""

    CLIENT = "client"
    WORKER = "worker"

    @property
    def folder(self) -> str:
        """The allowlist's folder name: ``clients`` or ``workers``."""
        return f"{self.value}s"


@dataclass(frozen=True)
class BrokerKeys:
    """The broker's keypair and where its allowlists are; made by :func:`load_broker_keys`."""

    folder: Path
    public: bytes
    secret: bytes = field(repr=False)
    local_worker: CurveKeys
    """Held by the workers the broker starts itself; admitted on the backend for this run only."""
    local_client: CurveKeys
    """Held by the gateway the broker starts itself; admitted on the frontend for this run only."""
    container_worker: CurveKeys
    """Held by the worker containers the broker starts itself; admitted on the backend for this
    run only, and only over ``ipc://``. A contained session shares its worker's uid in a
    container, so it could read the key file: over TCP the key admits nobody."""

    def allowlist(self, role: Role) -> Path:
        return self.folder / role.folder


def _broker_files(folder: Path) -> tuple[Path, Path]:
    return folder / f"{BROKER}{PUBLIC_SUFFIX}", folder / f"{BROKER}{SECRET_SUFFIX}"


def init_keys(folder: str | os.PathLike[str]) -> bytes:
    """Make the broker's keypair and empty allowlists in ``folder``; returns the public key.

    Raises :class:`CurveKeyError` when ``folder`` already holds a broker key: every bundle made
    from it holds its public key, and a new one would lock all of those peers out.
    """
    path = Path(folder)
    public_file, secret_file = _broker_files(path)
    for existing in (secret_file, public_file):
        if existing.exists():
            raise CurveKeyError(
                f"{path} already holds a broker key ({existing.name}); a new one would lock out"
                " every peer given a bundle of the old one: remove it first if that is meant"
            )
    for role in Role:
        make_private_dir(path / role.folder)
        make_private_dir(path / BUNDLES / role.folder)
    public, secret = zmq.curve_keypair()
    metadata = {"role": "broker"}
    write_secret(path, BROKER, public, secret, metadata)
    write_public(path, BROKER, public, metadata)
    return public


def add_peer(folder: str | os.PathLike[str], role: Role, name: str) -> Path:
    """Make a keypair for the ``role`` peer ``name``, admit its public key and write its bundle;
    returns the bundle's folder.

    Raises :class:`CurveKeyError` when ``folder`` holds no broker key, ``name`` is not a valid
    file name, or a ``role`` key of that name (or its bundle) exists already.
    """
    path = Path(folder)
    check_name(name)
    public_file, _ = _broker_files(path)
    if not public_file.is_file():
        raise CurveKeyError(
            f"{path} holds no broker key: run `openenv-broker keys init {path}` first"
        )
    broker_public = read_public(public_file)
    allowlist = make_private_dir(path / role.folder)
    entry = allowlist / f"{name}{PUBLIC_SUFFIX}"
    bundle = path / BUNDLES / role.folder / name
    for taken in (entry, bundle):
        if taken.exists():
            raise CurveKeyError(
                f"a {role} key named {name!r} exists already ({taken}); remove its allowlist"
                f" entry and bundle to replace it, or pick another name"
            )
    make_private_dir(bundle.parent)
    bundle.mkdir(mode=0o700)
    keys = CurveKeys.generate(broker_public)
    metadata = {"role": str(role), "name": name}
    write_bundle(bundle, keys, metadata)
    # Admitted last: a failure above leaves a bundle nobody admits, never a key without a bundle.
    write_public(allowlist, name, keys.public, metadata)
    return bundle


def load_broker_keys(folder: str | os.PathLike[str]) -> BrokerKeys:
    """The broker's keys in ``folder``, with fresh keys for the peers it starts itself.

    Raises :class:`CurveKeyError` when the keypair is missing or malformed or an allowlist folder
    is missing; logs a warning for a folder other users may write to (they could admit a key).
    """
    path = Path(folder)
    _, secret_file = _broker_files(path)
    if not secret_file.is_file():
        raise CurveKeyError(
            f"{path} holds no broker key ({secret_file.name}): make one with"
            f" `openenv-broker keys init {path}`"
        )
    public, secret = read_keypair(secret_file)
    for role in Role:
        allowlist = path / role.folder
        if not allowlist.is_dir():
            raise CurveKeyError(f"{path} has no {role.folder}/ allowlist folder")
        _warn_if_writable(allowlist)
    _warn_if_writable(path)
    return BrokerKeys(
        folder=path,
        public=public,
        secret=secret,
        local_worker=CurveKeys.generate(public),
        local_client=CurveKeys.generate(public),
        container_worker=CurveKeys.generate(public),
    )


def _warn_if_writable(path: Path) -> None:
    """Warn when users other than the owner may write to ``path``: unless it is on a read-only
    mount, where nobody may (a Kubernetes Secret volume, mode 1777 on many clusters, is one)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not _read_only_mount(path):
        log.warning(
            "%s is writable by other users, who could admit keys of their own: chmod 700 it",
            path,
        )


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
