"""Where a worker runs, as it tells the broker in ``READY``: provider, host and instance.

- ``provider``: who started it. ``local`` for the workers ``openenv-broker start`` runs itself,
  ``remote`` for ``openenv-broker worker`` run by hand (the default), or what the one that
  started it says: ``docker``, ``ray``, ``kubernetes``...
- ``host``: the host name it runs on.
- ``instance``: its container, actor or pod id, when it has one.

A provider says so through :func:`~openenv_zmq.worker.loop.run_worker`'s arguments, or through
the environment of the process it starts: :data:`PROVIDER_ENV` and :data:`INSTANCE_ENV`. In a
Kubernetes pod or a Docker container, ``HOSTNAME`` is the pod's name or the container's short id,
so it stands in for a missing instance id there. Pure: the environment and host name are passed in.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from openenv_zmq.protocol.schema import MAX_LABEL_CHARS

PROVIDER_ENV = "OPENENV_ZMQ_PROVIDER"
"""Who started the worker, when no ``provider`` argument says."""
INSTANCE_ENV = "OPENENV_ZMQ_WORKER_ID"
"""The worker's container, actor or pod id, when no ``instance`` argument says."""
DEFAULT_PROVIDER = "remote"
"""A worker nobody says started it was started by hand, on this host or another."""
_HOSTNAME_IS_INSTANCE = frozenset({"docker", "kubernetes"})
"""Providers whose ``HOSTNAME`` is the instance id: the container's short id, the pod's name."""


@dataclass(frozen=True)
class WorkerOrigin:
    provider: str
    host: str | None
    instance: str | None = None

    def meta(self) -> dict[str, str]:
        """The ``READY`` meta fields: only those known."""
        fields = {"provider": self.provider, "host": self.host, "instance": self.instance}
        return {key: value for key, value in fields.items() if value is not None}


def check_label(what: str, value: str) -> str:
    """``value``, or :class:`ValueError` naming ``what`` when it is empty or too long to send."""
    if not value or len(value) > MAX_LABEL_CHARS:
        raise ValueError(
            f"{what} must be 1 to {MAX_LABEL_CHARS} characters, got {len(value)}: {value[:40]!r}"
        )
    return value


def worker_origin(
    provider: str | None = None,
    instance: str | None = None,
    environ: Mapping[str, str] | None = None,
    hostname: str | None = None,
) -> WorkerOrigin:
    """Where this worker runs: the arguments first, then the environment (``os.environ`` by
    default), then the defaults. ``hostname``: this host's name (``socket.gethostname()`` by
    default). Raises :class:`ValueError` naming the value that is empty or over
    :data:`~openenv_zmq.protocol.schema.MAX_LABEL_CHARS` characters."""
    environ = os.environ if environ is None else environ
    if provider is None:
        provider = environ.get(PROVIDER_ENV) or DEFAULT_PROVIDER
        check_label(PROVIDER_ENV, provider)
    else:
        check_label("provider", provider)
    if instance is None:
        source = INSTANCE_ENV if environ.get(INSTANCE_ENV) else "HOSTNAME"
        if source == INSTANCE_ENV or provider in _HOSTNAME_IS_INSTANCE:
            instance = environ.get(source) or None
        if instance is not None:
            check_label(source, instance)
    else:
        check_label("instance", instance)
    host = socket.gethostname() if hostname is None else hostname
    # A host name is at most 64 characters on Linux; cut, not refused: it is not the user's.
    return WorkerOrigin(provider, host[:MAX_LABEL_CHARS] or None, instance)
