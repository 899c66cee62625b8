"""The broker's Prometheus metrics, served over HTTP by ``prometheus_client``.

Nothing here runs on the routing path. The routing thread copies the core's ``status()`` every
:data:`PUBLISH_SECONDS` (:attr:`broker.loop.BrokerServer.published`); a scrape, on the HTTP
server's thread, turns the latest copy into metric families (:class:`BrokerCollector`):

- ``openenv_zmq_requests_total{op}``: requests forwarded to workers;
- ``openenv_zmq_env_steps_total``: env steps forwarded to workers;
- ``openenv_zmq_errors_total{type}``: error answers sent to clients, the broker's own and the
  workers', by type name;
- ``openenv_zmq_request_seconds{op}``: a histogram of the seconds from forwarding a request to
  its worker's answer;
- gauges ``openenv_zmq_workers_live``, ``openenv_zmq_env_slots_used``,
  ``openenv_zmq_env_slots_free``, ``openenv_zmq_client_sessions`` and
  ``openenv_zmq_requests_in_flight``;
- and ``prometheus_client``'s ``process_*`` metrics of the broker process (memory, CPU, files).

Imported only when metrics are asked for (``start --metrics-port``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_float_to_go_string

from openenv_zmq.errors import TransportError

PUBLISH_SECONDS = 0.5
"""How often the routing thread copies its status for the exporter: a scrape is at most this
much behind."""

_float_to_go_string: Callable[[float], str] = _untyped_float_to_go_string
"""How Prometheus writes an ``le`` bound (``+Inf``, ``100`` not ``100.0``)."""

Snapshot = Callable[[], "Mapping[str, Any] | None"]
"""The broker's latest ``status()``, or ``None`` before the first one."""


@dataclass(frozen=True)
class MetricsSpec:
    """Where to serve ``/metrics``."""

    port: int
    host: str = "127.0.0.1"


class BrokerCollector(Collector):
    """Metric families from the latest status ``snapshot()`` returns; none before the first."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        status = self._snapshot()
        if status is None:
            return
        metrics = status["metrics"]
        requests = CounterMetricFamily(
            "openenv_zmq_requests", "Requests forwarded to workers, by op.", labels=["op"]
        )
        for op, count in metrics["requests"].items():
            requests.add_metric([op], count)
        yield requests
        yield CounterMetricFamily(
            "openenv_zmq_env_steps", "Env steps forwarded to workers.", value=metrics["env_steps"]
        )
        errors = CounterMetricFamily(
            "openenv_zmq_errors",
            "Error answers sent to clients, the broker's own and the workers', by type.",
            labels=["type"],
        )
        for name, count in metrics["errors"].items():
            errors.add_metric([name], count)
        yield errors
        latency = HistogramMetricFamily(
            "openenv_zmq_request_seconds",
            "Seconds from forwarding a request to a worker to the worker's answer, by op.",
            labels=["op"],
        )
        bounds = [_float_to_go_string(b) for b in (*metrics["latency_bounds_s"], math.inf)]
        for op, histogram in metrics["latency"].items():
            cumulative = itertools.accumulate(histogram["counts"])
            buckets = list(zip(bounds, cumulative, strict=True))
            latency.add_metric([op], buckets, sum_value=histogram["sum_s"])
        yield latency
        live = sum(1 for w in status["workers"] if w["state"] == "READY")
        slots = status["env_slots"]
        for name, text, value in (
            ("workers_live", "Workers registered and alive.", live),
            ("env_slots_used", "Env slots placed on live workers.", slots["used"]),
            ("env_slots_free", "Env slots free on live workers.", slots["free"]),
            ("client_sessions", "Client sessions holding a lease.", status["sessions"]["live"]),
            ("requests_in_flight", "Requests forwarded and not answered yet.", status["in_flight"]),
        ):
            yield GaugeMetricFamily(f"openenv_zmq_{name}", text, value=value)


class MetricsServer:
    """``/metrics`` on an HTTP server thread of its own. Call :meth:`close` to stop it."""

    def __init__(self, spec: MetricsSpec, snapshot: Snapshot) -> None:
        """Serve at once. Raises :class:`TransportError` naming the address when it cannot
        listen there (a port in use, a host that does not resolve)."""
        registry = CollectorRegistry()
        registry.register(BrokerCollector(snapshot))
        ProcessCollector(registry=registry)
        try:
            self._server, self._thread = start_http_server(spec.port, spec.host, registry)
        except OSError as exc:
            raise TransportError(
                f"cannot serve metrics on http://{spec.host}:{spec.port}/metrics:"
                f" {exc.strerror or exc}"
            ) from None
        self.port = self._server.server_port
        """The port it serves on (the one picked when ``spec.port`` is 0)."""

    def close(self) -> None:
        """Stop serving and release the port. Idempotent."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
