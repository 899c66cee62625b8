"""Where one broker lifetime (an *epoch*) starts numbering its env ids and worker ids.

A client outlives a broker restart: its socket reconnects to the new broker at the same address
and its requests still name the old worker and env ids. Had the new broker numbered from 0 again,
those requests would step whichever client's envs now hold those ids. So each lifetime starts
its env ids at its own random point of ``[0, 2**52)``, and its worker ids at one of
``[1, 10**6)``, and counts up from there.

Env ids carry the guarantee: a worker answers ``EnvNotOnWorker`` for an env id it does not host,
so a stale request whose worker id happens to be valid again still reaches no one's env. Worker
ids are shown to people (``status``, logs), so they stay short; most stale requests name a
worker id this lifetime never gave out, and the broker refuses them itself with a message that
says why.

Random rather than derived from the clock: wall clocks step back (NTP, a restored VM, a broker
rescheduled on another host), and a lifetime giving out ids faster than its clock ticks would run
into the next one's; ruling both out would need state kept across restarts, which a broker in a
container does not have. Two lifetimes that give out ``n1`` and ``n2`` env ids share one with
probability below ``(n1 + n2) / 2**52`` (5e-10 for a million each).

Every id stays below :data:`ID_LIMIT` (JSON numbers, and so browsers behind the gateway, hold
integers exactly up to it): from a start below ``2**52``, crossing it takes ``2**52`` ids, 142
years at a million a second.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

ID_LIMIT = 2**53
"""Every env id and worker id is below this."""

ENV_ID_STARTS = 2**52
"""Epochs start their env ids below this, leaving as many again for the ids they give out."""
WORKER_ID_STARTS = 10**6
"""Epochs start their worker ids below this: short enough to read in ``status``."""


@dataclass(frozen=True, slots=True)
class Epoch:
    """The first env id and the first worker id one broker lifetime gives out.

    Pass one in :class:`broker.core.BrokerConfig` to make a core's ids predictable (tests);
    by default each core draws a fresh one with :meth:`fresh`.
    """

    first_env_id: int
    first_worker_id: int

    def __post_init__(self) -> None:
        if not 0 <= self.first_env_id < ENV_ID_STARTS:
            raise ValueError(f"first_env_id must be in [0, 2**52), not {self.first_env_id}")
        if not 1 <= self.first_worker_id < WORKER_ID_STARTS:
            raise ValueError(f"first_worker_id must be in [1, 10**6), not {self.first_worker_id}")

    @classmethod
    def fresh(cls) -> Epoch:
        """A random epoch from the OS's entropy, so no two processes share a seed by accident."""
        return cls(secrets.randbelow(ENV_ID_STARTS), 1 + secrets.randbelow(WORKER_ID_STARTS - 1))
