"""broker.placement.place: examples, and properties checked against independent placements."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.placement import Host, place
from openenv_zmq.errors import NoWorkerAvailable


def loads(hosts: Sequence[Host], counts: Sequence[int]) -> list[int]:
    return [h.used + n for h, n in zip(hosts, counts, strict=True)]


def one_at_a_time(hosts: Sequence[Host], num_envs: int) -> list[int]:
    """Each env to the least loaded host with room: optimal for the maximum load."""
    counts = [0] * len(hosts)
    for _ in range(num_envs):
        room = [i for i, h in enumerate(hosts) if counts[i] < h.free]
        least = min(room, key=lambda i: hosts[i].used + counts[i])
        counts[least] += 1
    return counts


def smallest_max_load(hosts: Sequence[Host], num_envs: int) -> int:
    """The best maximum load over every possible placement (brute force)."""
    return min(
        max(loads(hosts, counts))
        for counts in itertools.product(*(range(h.free + 1) for h in hosts))
        if sum(counts) == num_envs
    )


@st.composite
def hosts_and_envs(
    draw: st.DrawFn, max_hosts: int = 8, max_capacity: int = 40
) -> tuple[list[Host], int]:
    hosts = []
    for _ in range(draw(st.integers(1, max_hosts))):
        capacity = draw(st.integers(0, max_capacity))
        hosts.append(Host(used=draw(st.integers(0, capacity)), capacity=capacity))
    num_envs = draw(st.integers(0, sum(h.free for h in hosts)))
    return hosts, num_envs


# ---------------------------------------------------------------- examples


def test_equal_hosts_share_evenly() -> None:
    assert place([Host(0, 8), Host(0, 8)], 6, "echo") == [3, 3]
    assert sorted(place([Host(3, 8), Host(3, 8)], 5, "echo")) == [2, 3]


def test_the_least_loaded_host_fills_first() -> None:
    assert place([Host(4, 8), Host(0, 8)], 6, "echo") == [1, 5]
    assert place([Host(4, 8), Host(0, 8)], 3, "echo") == [0, 3]


def test_capacity_caps_a_host() -> None:
    assert place([Host(0, 2), Host(0, 100)], 10, "echo") == [2, 8]


def test_among_equally_loaded_hosts_most_free_slots_first_then_order() -> None:
    assert place([Host(1, 4), Host(1, 9)], 1, "echo") == [0, 1]
    assert place([Host(1, 9), Host(1, 9)], 1, "echo") == [1, 0]
    assert place([Host(2, 9), Host(1, 4), Host(1, 9)], 3, "echo") == [0, 1, 2]


def test_no_envs_go_nowhere() -> None:
    assert place([Host(0, 8), Host(8, 8)], 0, "echo") == [0, 0]


def test_too_few_free_slots_is_no_worker_available() -> None:
    with pytest.raises(NoWorkerAvailable) as raised:
        place([Host(0, 8), Host(0, 8)], 17, "echo")
    assert str(raised.value) == (
        "asked for 17 'echo' envs but the 2 live worker(s) hosting 'echo' have 16 free slot(s)"
        " of 16"
    )
    with pytest.raises(NoWorkerAvailable, match="have 1 free slot"):
        place([Host(7, 8), Host(8, 8)], 2, "echo")


# ---------------------------------------------------------------- properties


@settings(max_examples=500, deadline=None)
@given(hosts_and_envs())
def test_counts_place_every_env_within_free_slots(case: tuple[list[Host], int]) -> None:
    hosts, num_envs = case
    counts = place(hosts, num_envs, "echo")
    assert len(counts) == len(hosts)
    assert sum(counts) == num_envs
    assert all(0 <= n <= h.free for h, n in zip(hosts, counts, strict=True))


@settings(max_examples=500, deadline=None)
@given(hosts_and_envs())
def test_loads_are_as_level_as_one_env_at_a_time_to_the_least_loaded(
    case: tuple[list[Host], int],
) -> None:
    hosts, num_envs = case
    placed = loads(hosts, place(hosts, num_envs, "echo"))
    greedy = loads(hosts, one_at_a_time(hosts, num_envs))
    assert max(placed) == max(greedy)
    assert sorted(placed) == sorted(greedy)


@settings(max_examples=300, deadline=None)
@given(hosts_and_envs(max_hosts=4, max_capacity=6))
def test_max_load_is_the_smallest_possible(case: tuple[list[Host], int]) -> None:
    hosts, num_envs = case
    assert max(loads(hosts, place(hosts, num_envs, "echo"))) == smallest_max_load(hosts, num_envs)


@settings(max_examples=300, deadline=None)
@given(hosts_and_envs(), st.integers(1, 20))
def test_more_envs_than_free_slots_is_refused(case: tuple[list[Host], int], extra: int) -> None:
    hosts, _ = case
    free = sum(h.free for h in hosts)
    with pytest.raises(NoWorkerAvailable, match=f"asked for {free + extra} 'echo' envs"):
        place(hosts, free + extra, "echo")
