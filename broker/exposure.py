"""Which of the broker's bind addresses other hosts can reach.

Without CURVE, anyone who reaches the broker's ports can use it, so ``openenv-broker start``
binds such an address only with ``--curve-dir`` or an explicit ``--insecure``. Loopback
(127.0.0.0/8, ``::1``, ``localhost``) and ``ipc://`` stay on this host. Anything else counts as
reachable, including ``0.0.0.0``, ``*``, interface names and host names: when in doubt, ask.
"""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = frozenset({"localhost"})


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
