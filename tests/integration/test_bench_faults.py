"""``python -m bench.faults`` in its smallest setting: its invariants hold, nothing is left over."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bench.faults.__main__ import main
from bench.faults.cluster import alive, descendants
from bench.faults.fuzz import measure_fuzz
from bench.faults.kills import measure_kills
from bench.faults.report import failures
from bench.faults.soak import measure_soak

pytestmark = pytest.mark.integration


def living_descendants() -> set[int]:
    return {pid for pid in descendants(os.getpid()) if alive(pid)}


@pytest.fixture
def no_process_left() -> Iterator[None]:
    """Every process a measurement starts ends with it (ones from earlier tests, such as
    multiprocessing's resource tracker, are not the measurement's)."""
    before = living_descendants()
    yield
    left = living_descendants() - before
    assert not left, f"processes outlived the measurement: {sorted(left)}"


@pytest.mark.usefixtures("no_process_left")
def test_fuzz_is_answered_and_a_client_beside_it_sees_no_error() -> None:
    report = measure_fuzz(messages=1000)
    assert report.frontend_sent + report.backend_sent == 1000
    assert report.answered_with_id == report.with_id > 0
    assert report.answered_without_id == report.without_id > 0
    assert report.unexpected_answers == 0
    assert report.client_steps > 0 and report.client_errors == {}, report.client_failure
    assert report.broker_alive and report.status_ok
    assert report.workers_kept == report.live_workers == 2
    assert not failures(report.rows())


@pytest.mark.usefixtures("no_process_left")
def test_a_killed_worker_fails_envs_not_calls_and_is_replaced() -> None:
    report = measure_kills(kills=1)
    assert report.call_failures == {}
    assert report.envs_lost > 0
    # each lost env is reported and re-placed (again, were a reset to fail and lose it anew)
    assert report.worker_lost + report.session_lost >= report.envs_lost
    assert report.replaced >= report.envs_lost
    assert report.rounds_recovered == 1 and len(report.recovery_s) == 1
    assert report.live_workers_end == 2 and report.broker_alive
    assert not failures(report.rows())


@pytest.mark.usefixtures("no_process_left")
def test_soak_ends_with_no_slot_used_and_no_session_live() -> None:
    report = measure_soak(duration=3.0)
    assert report.client_cycles > 0 and report.clients_killed > 0
    assert report.errors == {}
    assert report.slots_used_end == report.sessions_live_end == report.groups_end == 0
    assert report.live_workers_end == 2 and report.broker_alive
    assert not failures(report.rows())


@pytest.mark.parametrize("flag", ["--messages", "--kills", "--duration"])
def test_sizes_must_be_positive(flag: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([flag, "0"])
    assert exit_.value.code == 2
