"""CURVE keys as files, and the bundle a client or worker is given.

Keys are stored in pyzmq's certificate format (czmq's): ``NAME.key`` holds a public key,
``NAME.key_secret`` the public and the secret key, both z85 text, readable by
:func:`zmq.auth.load_certificate`. pyzmq's own writer (:func:`zmq.auth.create_certificates`)
creates the secret file with the process's umask, readable by others for as long as nobody
tightens it; this module writes it with mode 0600 from the start, and refuses to overwrite a key.

A *bundle* is the folder one peer (client or worker) is given, written by ``openenv-broker keys
add``. It holds that peer's own keypair and the broker's public key, nothing else::

    self.key          the peer's public key
    self.key_secret   the peer's public and secret key (mode 0600)
    broker.key        the broker's public key: the peer refuses a server that cannot prove it

Never the broker's secret: a peer that holds it could pose as the broker to every other peer.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from openenv_zmq.errors import CurveKeyError

log = logging.getLogger(__name__)

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
SELF = "self"
"""The name of a bundle's own keypair: ``self.key``, ``self.key_secret``."""
BROKER = "broker"
"""The name of the broker's key: ``broker.key`` (in bundles and the broker's key folder)."""
Z85_KEY_LENGTH = 40
"""A 32-byte CURVE key in z85 text."""
PRIVATE_DIR_MODE = 0o700
SECRET_FILE_MODE = 0o600

_BANNER = "#   ****  Generated on {now} by openenv-zmq  ****\n#   ZeroMQ CURVE {kind} Certificate\n"
_SECRET_WARNING = "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n"


@dataclass(frozen=True)
class CurveKeys:
    """What a CURVE client socket needs: its own keypair and the server's public key, each z85.

    The secret is left out of ``repr``, so a logged or printed object does not leak it.
    """

    public: bytes
    secret: bytes = field(repr=False)
    server: bytes
    """The broker's public key: the handshake fails unless the broker holds its secret."""

    @classmethod
    def generate(cls, server: bytes) -> CurveKeys:
        """A fresh keypair for a peer of the broker whose public key is ``server``."""
        public, secret = zmq.curve_keypair()
        return cls(public, secret, server)


def check_key(key: bytes, where: object) -> bytes:
    """``key`` if it is a z85 CURVE key, else :class:`CurveKeyError` naming ``where``."""
    if len(key) == Z85_KEY_LENGTH:
        try:
            z85.decode(key)
        except (ValueError, KeyError, TypeError):
            pass
        else:
            return key
    raise CurveKeyError(f"{where} holds no valid CURVE key (40 z85 characters)")


def make_private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents, each mode 0700 (``mkdir(parents=True)`` would
    give the parents the umask's mode); returns ``path``. Existing folders are left as they are."""
    missing = []
    folder = path
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            folder.mkdir(mode=PRIVATE_DIR_MODE)
    return path


def _certificate(kind: str, public: bytes, secret: bytes | None, metadata: dict[str, str]) -> str:
    lines = [_BANNER.format(now=datetime.datetime.now().isoformat(timespec="seconds"), kind=kind)]
    if secret is not None:
        lines.append(_SECRET_WARNING)
    lines.append("\nmetadata\n")
    lines += [f"    {key} = {value}\n" for key, value in metadata.items()]
    lines.append("curve\n")
    lines.append(f'    public-key = "{public.decode("ascii")}"\n')
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"\n')
    return "".join(lines)


def _write_new(path: Path, text: str, mode: int) -> None:
    """Write a file that must not exist yet, created with ``mode`` (never wider, not even for
    an instant: the mode is given to ``open``, not applied afterwards)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise CurveKeyError(f"{path} already exists; not overwriting a key") from None
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    # The umask may have narrowed ``mode``; it must never have widened it, but say it exactly.
    os.chmod(path, mode)


def write_public(folder: Path, name: str, public: bytes, metadata: dict[str, str]) -> Path:
    """``folder/NAME.key`` holding ``public``; refuses to overwrite an existing file."""
    path = folder / f"{name}{PUBLIC_SUFFIX}"
    _write_new(path, _certificate("Public", public, None, metadata), 0o644)
    return path


def write_secret(
    folder: Path, name: str, public: bytes, secret: bytes, metadata: dict[str, str]
) -> Path:
    """``folder/NAME.key_secret`` holding both keys, mode 0600; refuses to overwrite."""
    path = folder / f"{name}{SECRET_SUFFIX}"
    _write_new(path, _certificate("**Secret**", public, secret, metadata), SECRET_FILE_MODE)
    return path


def read_public(path: Path) -> bytes:
    """The public key in the certificate file ``path``. Raises :class:`CurveKeyError`."""
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"cannot read the CURVE key in {path}: {exc}") from None
    return check_key(public, path)


def read_keypair(path: Path) -> tuple[bytes, bytes]:
    """The public and secret key in the secret certificate ``path``. Raises
    :class:`CurveKeyError` when either is missing or malformed; logs a warning when the file is
    readable by other users (a Kubernetes secret is mounted 0644 unless told otherwise)."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"cannot read the CURVE keys in {path}: {exc}") from None
    if secret is None:
        raise CurveKeyError(f"{path} holds no secret key")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s holds a secret key but is mode %04o: make it 0600", path, mode)
    return check_key(public, path), check_key(secret, path)


def write_bundle(folder: Path, keys: CurveKeys, metadata: dict[str, str]) -> Path:
    """Write the bundle :func:`load_bundle` reads into the existing private ``folder``: the
    peer's keypair (secret file 0600) and the broker's public key. Refuses to overwrite."""
    write_secret(folder, SELF, keys.public, keys.secret, metadata)
    write_public(folder, SELF, keys.public, metadata)
    write_public(folder, BROKER, keys.server, {"role": "broker"})
    return folder


def load_bundle(folder: str | os.PathLike[str]) -> CurveKeys:
    """The keys of the bundle ``folder`` (see the module docstring). Raises
    :class:`CurveKeyError` naming what is missing or malformed."""
    path = Path(folder)
    if not path.is_dir():
        raise CurveKeyError(f"{path} is not a folder (a bundle made by `openenv-broker keys add`)")
    secret_file = path / f"{SELF}{SECRET_SUFFIX}"
    broker_file = path / f"{BROKER}{PUBLIC_SUFFIX}"
    for needed in (secret_file, broker_file):
        if not needed.is_file():
            hint = (
                " (this is the broker's own key folder: give a client or worker the bundle"
                " `openenv-broker keys add` wrote for it)"
                if (path / f"{BROKER}{SECRET_SUFFIX}").exists()
                else " (a bundle made by `openenv-broker keys add` has it)"
            )
            raise CurveKeyError(f"{path} has no {needed.name}{hint}")
    public, secret = read_keypair(secret_file)
    return CurveKeys(public, secret, read_public(broker_file))


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str) -> str:
    """``name`` if it can name a key file (letters, digits, ``.``, ``_``, ``-``; up to 64, not
    starting with a dot or dash), else :class:`CurveKeyError`."""
    if not _NAME.fullmatch(name):
        raise CurveKeyError(
            f"{name!r} cannot name a key: use up to 64 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return name


CurveDir = str | os.PathLike[str] | CurveKeys
"""A client's ``curve_dir=``: a bundle folder, or keys already loaded."""


def client_keys(curve_dir: CurveDir | None) -> CurveKeys | None:
    """The keys ``curve_dir`` names (loading a bundle folder), or ``None`` without CURVE."""
    if curve_dir is None or isinstance(curve_dir, CurveKeys):
        return curve_dir
    return load_bundle(curve_dir)
