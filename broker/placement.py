"""Where new envs go: water-filling over the slots of the workers that host their env kind.

A batch step waits for its most loaded worker, so new envs go to the least loaded hosts first and
the envs per worker end up as level as capacities allow. Pure: plain numbers in, counts out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from openenv_zmq.errors import NoWorkerAvailable


@dataclass(frozen=True, slots=True)
class Host:
    """A live worker's slots: ``used`` of ``capacity`` hold envs."""

    used: int
    capacity: int

    @property
    def free(self) -> int:
        return self.capacity - self.used


def place(hosts: Sequence[Host], num_envs: int, env: str) -> list[int]:
    """How many of ``num_envs`` new ``env`` envs go to each of ``hosts``, in their order.

    Fills the least loaded hosts first, so that the maximum load is the smallest possible and the
    loads end up as level as capacities allow; among hosts equally loaded, the one with most free
    slots first, then the earlier one. Raises :class:`NoWorkerAvailable` when the hosts lack
    ``num_envs`` free slots together.
    """
    free = sum(h.free for h in hosts)
    if free < num_envs:
        raise NoWorkerAvailable(
            f"asked for {num_envs} {env!r} envs but the {len(hosts)} live worker(s) hosting"
            f" {env!r} have {free} free slot(s) of {sum(h.capacity for h in hosts)}"
        )
    if not hosts:
        return []

    def filled(level: int) -> int:
        return sum(min(max(level - h.used, 0), h.free) for h in hosts)

    # Smallest load level at which the hosts take every env (filled() is monotonic in level).
    low, high = min(h.used for h in hosts), max(h.capacity for h in hosts)
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if filled(mid) < num_envs else (low, mid)
    counts = [min(max(low - 1 - h.used, 0), h.free) for h in hosts]
    remainder = num_envs - sum(counts)
    for i in sorted(range(len(hosts)), key=lambda i: -hosts[i].free):
        if remainder == 0:
            break
        host = hosts[i]
        if host.used + counts[i] < low and counts[i] < host.free:
            counts[i] += 1
            remainder -= 1
    return counts
