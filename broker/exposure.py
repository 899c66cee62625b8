"""Which of the broker's bind addresses other hosts can reach, and where they connect.

Without CURVE, anyone who reaches the broker's ports can use it, so ``openenv-broker start``
binds such an address only with ``--curve-dir`` or an explicit ``--insecure``. Loopback
(127.0.0.0/8, ``::1``, ``localhost``) and ``ipc://`` stay on this host. Anything else counts as
reachable, including ``0.0.0.0``, ``*``, interface names and host names: when in doubt, ask.

A wildcard bind (``0.0.0.0``, ``*``, ``::``) listens on every interface but is no address to
connect to: a process on this host connects over loopback (:func:`local_address`), and other
hosts at the address the operator advertises (:func:`advertised`, ``start --advertise``).
"""

from __future__ import annotations

import ipaddress
import re

LOOPBACK_NAMES = frozenset({"localhost"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "*", "::"})
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


LOCAL_SCHEMES = frozenset({"ipc", "inproc"})
"""Transports no other host can reach: ipc:// is a file on this host, guarded by its folder's
permissions, and inproc:// lives inside one process."""


def host_of(address: str) -> str | None:
    """The host of a ``tcp://HOST:PORT`` address (brackets of an IPv6 literal removed), or
    ``None`` for another transport."""
    scheme, _, rest = address.partition("://")
    if scheme != "tcp":
        return None
    host = rest.rpartition(":")[0] or rest
    return host.removeprefix("[").removesuffix("]")


def reachable_from_other_hosts(address: str) -> bool:
    """Whether binding ``address`` may let another host connect."""
    scheme = address.partition("://")[0]
    if scheme in LOCAL_SCHEMES:
        return False
    host = host_of(address)
    if host is None:
        return True  # tipc://, vmci://, ws://...: not ours to judge, so never assumed local
    if host.lower() in LOOPBACK_NAMES:
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def is_wildcard(address: str) -> bool:
    """Whether ``address`` is a ``tcp://`` bind on every interface (``0.0.0.0``, ``*``, ``::``)."""
    return host_of(address) in WILDCARD_HOSTS


def port_of(address: str) -> str:
    """The port of a ``tcp://HOST:PORT`` address, as written (``*`` included)."""
    return address.rpartition(":")[2]


def local_address(address: str) -> str:
    """Where a process on this host connects to the bound ``address``: loopback for a wildcard
    (``127.0.0.1``, or ``::1`` for ``::``), else ``address`` itself."""
    if not is_wildcard(address):
        return address
    loopback = "[::1]" if host_of(address) == "::" else "127.0.0.1"
    return f"tcp://{loopback}:{port_of(address)}"


def advertised(address: str) -> str:
    """``address`` if peers on other hosts can connect to it: ``tcp://HOST:PORT`` with a host
    name or IP address (IPv6 in brackets) and a port from 1 to 65535. Raises ``ValueError``
    saying what is wrong otherwise."""
    scheme, separator, rest = address.partition("://")
    if not separator or scheme != "tcp":
        raise ValueError(f"{address!r} is not tcp://HOST:PORT (other hosts connect over TCP)")
    host, colon, port = rest.rpartition(":")
    if not colon or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{address!r} needs a port from 1 to 65535: tcp://HOST:PORT")
    bracketed = host.startswith("[") and host.endswith("]")
    bare = host[1:-1] if bracketed else host
    if bare in WILDCARD_HOSTS:
        raise ValueError(
            f"{address!r} is every interface, not an address to connect to: give the address"
            " other hosts reach this one at"
        )
    if ":" in bare and not bracketed:
        raise ValueError(f"{address!r}: an IPv6 address goes in brackets, tcp://[{bare}]:{port}")
    if bracketed:
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            raise ValueError(f"{address!r}: {bare!r} in brackets is not an IPv6 address") from None
    elif not _HOST_NAME.fullmatch(bare):
        raise ValueError(f"{address!r}: {bare!r} is not a host name or an IP address")
    return address
