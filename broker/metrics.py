"""What the broker counts, sans I/O: requests, env steps, errors, and latency histograms.

:class:`BrokerMetrics` is kept by :class:`~broker.core.BrokerCore` on its routing path, so each
count costs a dict lookup and an add, nothing more: no clock read (the core passes its ``now``),
no lock, no payload decoded. :meth:`BrokerMetrics.snapshot` is what ``status()`` carries under
``"metrics"``; :func:`compare` turns two snapshots into rates and percentiles for the interval
between them (``openenv-broker status --watch``), and the Prometheus exporter
(:mod:`broker.exporter`) reads the same snapshot when scraped.

Latency is the time from forwarding a request to a worker to the worker's answer reaching the
broker, per op, in fixed buckets (:data:`LATENCY_BOUNDS_S`): percentiles are read from bucket
counts as Prometheus' ``histogram_quantile`` reads them, linearly within a bucket.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openenv_zmq.protocol import WORKER_OPS, Op

LATENCY_BOUNDS_S: tuple[float, ...] = (
    *(float(f"{m}e{e}") for e in range(-5, 2) for m in (1, 1.5, 2, 3, 5, 7)),
    100.0,
)
"""Upper bounds of the latency buckets, in seconds: 10 µs to 100 s, six a decade (1, 1.5, 2,
3, 5, 7), each at most 5/3 of the one before: a percentile read from them is in the bucket of
the true one, so within that factor of it. A last bucket holds what is slower than 100 s."""
MAX_ERROR_TYPES = 64
"""Error type names counted apart; more are counted under :data:`OTHER_ERRORS`. Workers name
the types of their errors, and a label set must stay bounded."""
MAX_ERROR_TYPE_CHARS = 64
OTHER_ERRORS = "other"
FORWARDED_OPS: tuple[Op, ...] = tuple(sorted(WORKER_OPS))
"""The ops counted and timed: the requests the broker forwards to workers."""


class LatencyHistogram:
    """Counts of observed seconds in the buckets of :data:`LATENCY_BOUNDS_S`, and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BOUNDS_S) + 1)
        """``counts[i]``: observations in ``(LATENCY_BOUNDS_S[i - 1], LATENCY_BOUNDS_S[i]]``;
        the last one, those above every bound."""
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BOUNDS_S, seconds)] += 1
        self.sum += seconds


class BrokerMetrics:
    """The broker's counters since it started. Only :class:`~broker.core.BrokerCore` changes
    them; the hot path increments :attr:`requests` and observes :attr:`latency` directly."""

    def __init__(self, lifetime: int = 0) -> None:
        self.lifetime = lifetime
        """A number of this broker lifetime alone (the core gives the first env id of its
        epoch): two snapshots with different ones come from two brokers."""
        self.requests: dict[Op, int] = dict.fromkeys(FORWARDED_OPS, 0)
        """Requests forwarded to workers, by op."""
        self.env_steps = 0
        """Env steps forwarded to workers (each env id of a STEP)."""
        self.errors: dict[str, int] = {}
        """``ERROR`` answers sent to clients, by type name: the broker's own and the workers'."""
        self.latency: dict[Op, LatencyHistogram] = {op: LatencyHistogram() for op in FORWARDED_OPS}
        """Seconds from forwarding a request to its worker's answer, by op."""

    def error(self, type_name: str) -> None:
        """One more ``ERROR`` answer of ``type_name``."""
        errors = self.errors
        if type_name in errors:
            errors[type_name] += 1
        elif len(errors) < MAX_ERROR_TYPES and len(type_name) <= MAX_ERROR_TYPE_CHARS:
            errors[type_name] = 1
        else:
            errors[OTHER_ERRORS] = errors.get(OTHER_ERRORS, 0) + 1

    def snapshot(self, now: float) -> dict[str, Any]:
        """A msgpack-able copy; ``clock_s`` is ``now``, the broker's monotonic clock, so that
        two snapshots of one broker tell the seconds between them. Ops are lower-case names."""
        return {
            "lifetime": self.lifetime,
            "clock_s": now,
            "requests": {op.name.lower(): n for op, n in self.requests.items()},
            "env_steps": self.env_steps,
            "errors": dict(self.errors),
            "latency_bounds_s": list(LATENCY_BOUNDS_S),
            "latency": {
                op.name.lower(): {"counts": list(h.counts), "sum_s": h.sum}
                for op, h in self.latency.items()
            },
        }


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0 to 1) of a histogram of ``counts`` over buckets ending at
    ``bounds`` (one more count than bounds: the overflow bucket); ``None`` when it is empty.

    Linear within the bucket holding it, from 0 for the first bucket; a quantile in the overflow
    bucket is the last bound (all that is known of it), as Prometheus' ``histogram_quantile``.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for i, count in enumerate(counts):
        if count and below + count >= rank:
            if i == len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * (rank - below) / count
        below += count
    return bounds[-1]


@dataclass(frozen=True)
class Interval:
    """What happened between two snapshots (or since the broker started, when ``seconds`` is
    ``None``: the first snapshot, or one after the broker restarted)."""

    seconds: float | None
    env_steps: int
    requests: dict[str, int]
    """Requests forwarded, by op."""
    errors: dict[str, int]
    """Error answers, by type; only types with any."""
    latency: dict[str, tuple[float | None, float | None]]
    """p50 and p99 seconds of the requests answered, by op (``None`` when none was)."""
    answered: dict[str, int]
    """Requests answered by their worker, by op."""

    def per_second(self, count: int) -> float | None:
        return None if not self.seconds else count / self.seconds

    @property
    def env_steps_per_s(self) -> float | None:
        return self.per_second(self.env_steps)

    @property
    def requests_per_s(self) -> float | None:
        return self.per_second(sum(self.requests.values()))


def compare(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> Interval:
    """The :class:`Interval` from snapshot ``previous`` to ``current`` (two ``status()
    ["metrics"]`` maps of one broker). Without ``previous``, or when ``current`` is of another
    broker lifetime (a clock or counter went back), the totals since the broker started."""
    if previous is not None and _restarted(previous, current):
        previous = None
    before: Mapping[str, Any] = previous or {}
    bounds = current["latency_bounds_s"]
    latency: dict[str, tuple[float | None, float | None]] = {}
    answered: dict[str, int] = {}
    for op, histogram in current["latency"].items():
        old = before.get("latency", {}).get(op, {}).get("counts")
        counts = _minus(histogram["counts"], old)
        answered[op] = sum(counts)
        latency[op] = (quantile(bounds, counts, 0.5), quantile(bounds, counts, 0.99))
    errors = {
        name: n - before.get("errors", {}).get(name, 0) for name, n in current["errors"].items()
    }
    return Interval(
        seconds=None if previous is None else current["clock_s"] - previous["clock_s"],
        env_steps=current["env_steps"] - before.get("env_steps", 0),
        requests={
            op: n - before.get("requests", {}).get(op, 0) for op, n in current["requests"].items()
        },
        errors={name: n for name, n in errors.items() if n},
        latency=latency,
        answered=answered,
    )


def _minus(counts: Sequence[int], old: Sequence[int] | None) -> list[int]:
    if old is None or len(old) != len(counts):
        return list(counts)
    return [a - b for a, b in zip(counts, old, strict=True)]


def _restarted(previous: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Whether ``current`` comes from a broker lifetime after ``previous``'s: counters only
    grow and the clock only moves on within one."""
    if current["lifetime"] != previous["lifetime"]:
        return True
    if current["clock_s"] < previous["clock_s"] or current["env_steps"] < previous["env_steps"]:
        return True
    before = previous["requests"]
    return any(n < before.get(op, 0) for op, n in current["requests"].items())
