"""The broker's counters and latency histograms: pure, and through BrokerCore with a fake clock."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from broker.core import BrokerConfig, BrokerCore
from broker.epoch import Epoch
from broker.metrics import (
    LATENCY_BOUNDS_S,
    MAX_ERROR_TYPES,
    OTHER_ERRORS,
    BrokerMetrics,
    LatencyHistogram,
    compare,
    quantile,
)
from openenv_zmq.errors import NotOwner, WorkerLost
from openenv_zmq.protocol import Message, Op, encode, error_message
from tests.unit.test_broker_core import (
    CLIENT,
    W1,
    alloc,
    hello,
    register,
    reply,
    step,
    to_client,
)

# ---------------------------------------------------------------- histogram and quantiles


def test_buckets_are_sorted_and_span_10_us_to_100_s() -> None:
    assert list(LATENCY_BOUNDS_S) == sorted(set(LATENCY_BOUNDS_S))
    assert (LATENCY_BOUNDS_S[0], LATENCY_BOUNDS_S[-1]) == (1e-5, 100.0)
    ratios = [b / a for a, b in itertools.pairwise(LATENCY_BOUNDS_S)]
    assert max(ratios) <= 5 / 3 + 1e-9


def test_an_observation_on_a_bound_counts_in_that_bucket_as_prometheus_le() -> None:
    histogram = LatencyHistogram()
    for seconds in (0.0, 1e-5, 1.0000001e-5, 0.005, 100.0, 1e6):
        histogram.observe(seconds)
    index = {b: i for i, b in enumerate(LATENCY_BOUNDS_S)}
    expected = {0: 2, index[1.5e-5]: 1, index[0.005]: 1, index[100.0]: 1, len(LATENCY_BOUNDS_S): 1}
    assert {i: n for i, n in enumerate(histogram.counts) if n} == expected
    assert histogram.sum == pytest.approx(0.0 + 1e-5 + 1.0000001e-5 + 0.005 + 100.0 + 1e6)


def test_quantile_of_nothing_is_none() -> None:
    assert quantile(LATENCY_BOUNDS_S, [0] * (len(LATENCY_BOUNDS_S) + 1), 0.5) is None


def test_quantile_interpolates_within_its_bucket() -> None:
    bounds = [1.0, 2.0, 4.0]
    assert quantile(bounds, [0, 4, 0, 0], 0.5) == 1.5  # half of (1, 2]
    assert quantile(bounds, [2, 0, 2, 0], 0.5) == 1.0  # the top of the first bucket
    assert quantile(bounds, [2, 0, 2, 0], 0.75) == 3.0
    assert quantile(bounds, [4, 0, 0, 0], 0.5) == 0.5  # the first bucket starts at 0
    assert quantile(bounds, [0, 0, 0, 3], 0.99) == 4.0  # overflow: the last bound is all we know
    assert quantile(bounds, [1, 0, 0, 1], 1.0) == 4.0


def test_percentiles_of_real_latencies_are_within_a_bucket_step() -> None:
    rng = np.random.default_rng(0)
    samples = rng.lognormal(mean=np.log(0.003), sigma=1.0, size=20_000)
    histogram = LatencyHistogram()
    for seconds in samples.tolist():
        histogram.observe(seconds)
    for q in (0.5, 0.9, 0.99):
        estimate = quantile(LATENCY_BOUNDS_S, histogram.counts, q)
        truth = float(np.quantile(samples, q))
        assert estimate is not None
        assert truth * 3 / 5 <= estimate <= truth * 5 / 3, (q, estimate, truth)


# ---------------------------------------------------------------- counters and intervals


def test_error_types_are_bounded() -> None:
    metrics = BrokerMetrics()
    for i in range(MAX_ERROR_TYPES + 10):
        metrics.error(f"Error{i}")
    metrics.error("Error0")
    metrics.error("X" * 65)
    assert len(metrics.errors) == MAX_ERROR_TYPES + 1
    assert metrics.errors["Error0"] == 2
    assert metrics.errors[OTHER_ERRORS] == 11


def snapshot_after(metrics: BrokerMetrics, now: float, steps: int, latency: float) -> Any:
    for _ in range(steps):
        metrics.requests[Op.STEP] += 1
        metrics.env_steps += 8
        metrics.latency[Op.STEP].observe(latency)
    return metrics.snapshot(now)


def test_an_interval_between_two_snapshots_gives_rates_and_its_own_percentiles() -> None:
    metrics = BrokerMetrics(lifetime=1)
    first = snapshot_after(metrics, 10.0, 100, latency=0.5)  # slow, before the interval
    metrics.error("NotOwner")
    second = snapshot_after(metrics, 12.0, 50, latency=0.002)
    interval = compare(first, second)
    assert interval.seconds == 2.0
    assert interval.requests["step"] == 50 and interval.requests["reset"] == 0
    assert interval.env_steps_per_s == 200.0
    assert interval.requests_per_s == 25.0
    assert interval.errors == {"NotOwner": 1}
    assert interval.answered["step"] == 50
    p50, p99 = interval.latency["step"]
    assert p50 is not None and p99 is not None
    assert 0.0015 <= p50 <= p99 <= 0.002  # the slow ones before the interval are not in it
    assert interval.latency["reset"] == (None, None)


def test_without_a_previous_snapshot_an_interval_is_the_totals() -> None:
    metrics = BrokerMetrics(lifetime=1)
    metrics.error("WorkerLost")
    interval = compare(None, snapshot_after(metrics, 5.0, 3, latency=0.01))
    assert interval.seconds is None
    assert interval.env_steps_per_s is None and interval.requests_per_s is None
    assert (interval.env_steps, interval.requests["step"]) == (24, 3)
    assert interval.errors == {"WorkerLost": 1}


def test_a_snapshot_of_another_broker_lifetime_starts_from_zero() -> None:
    old = snapshot_after(BrokerMetrics(lifetime=1), 100.0, 1000, latency=0.01)
    new = snapshot_after(BrokerMetrics(lifetime=2), 101.0, 10, latency=0.01)
    interval = compare(old, new)
    assert interval.seconds is None
    assert interval.requests["step"] == 10
    # and within one lifetime, counters that went back mean the same
    assert compare(old, new | {"lifetime": 1}).seconds is None


# ---------------------------------------------------------------- through the core


@pytest.fixture
def core() -> BrokerCore:
    return BrokerCore(BrokerConfig(epoch=Epoch(0, 1)))


def metrics_of(core: BrokerCore) -> dict[str, Any]:
    metrics: dict[str, Any] = core.status()["metrics"]
    return metrics


def test_the_core_counts_forwarded_requests_env_steps_and_times_answers(
    core: BrokerCore,
) -> None:
    worker = register(core, W1)
    token = hello(core)
    group = alloc(core, token, 4)
    core.on_client(CLIENT, step(worker, [0, 1, 2, 3], 7, token, group.group), 1.0)
    core.on_client(CLIENT, step(worker, [0, 1], 8, token, group.group), 1.5)
    [answer] = core.on_worker(W1, reply(CLIENT, 7, [0, 1, 2, 3]), 1.004)
    assert to_client(answer).request_id == 7
    metrics = metrics_of(core)
    assert metrics["requests"] == {"create": 0, "reset": 0, "step": 2, "state": 0, "close": 0}
    assert metrics["env_steps"] == 6
    step_latency = metrics["latency"]["step"]
    assert sum(step_latency["counts"]) == 1  # request 8 is still in flight
    assert step_latency["sum_s"] == pytest.approx(0.004)
    assert step_latency["counts"][LATENCY_BOUNDS_S.index(0.005)] == 1
    assert metrics["errors"] == {}
    assert metrics["clock_s"] == 1.004


def test_the_core_counts_the_errors_it_answers_and_those_workers_answer_by_type(
    core: BrokerCore,
) -> None:
    worker = register(core, W1)
    token, other = hello(core), hello(core, b"client-b")
    group = alloc(core, token, 2)
    # the broker's own: another session's envs, twice
    for request_id in (3, 4):
        [refusal] = core.on_client(
            b"client-b", step(worker, [0], request_id, other, group.group), 1.0
        )
        assert to_client(refusal, b"client-b").meta["type"] == NotOwner.__name__
    # a worker's whole-request error, counted from its decoded header
    core.on_client(CLIENT, step(worker, [0], 5, token, group.group), 1.0)
    failed = error_message(5, "EnvExecutionError", "the env blew up")
    core.on_worker(W1, [CLIENT, *encode(failed)], 1.2)
    # a worker lost with a request in flight
    core.on_client(CLIENT, step(worker, [1], 6, token, group.group), 1.3)
    core.worker_exited(W1, 1.4)
    metrics = metrics_of(core)
    assert metrics["errors"] == {"NotOwner": 2, "EnvExecutionError": 1, WorkerLost.__name__: 1}
    assert metrics["requests"]["step"] == 2  # refused requests are not forwarded
    assert sum(metrics["latency"]["step"]["counts"]) == 1  # the lost one got no answer


def test_status_with_metrics_travels_in_a_reply(core: BrokerCore) -> None:
    register(core, W1)
    [output] = core.on_client(CLIENT, encode(Message(Op.STATUS, 2)), 3.0)
    metrics = to_client(output).meta["status"]["metrics"]  # encoded, then decoded
    assert metrics["latency_bounds_s"] == list(LATENCY_BOUNDS_S)
    assert set(metrics["latency"]) == {"create", "reset", "step", "state", "close"}
    assert metrics["lifetime"] == 0  # the first env id of the core's epoch
