"""The Prometheus collector over a broker core's status: no HTTP, no sockets."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from broker.core import BrokerConfig, BrokerCore
from broker.epoch import Epoch
from broker.exporter import BrokerCollector
from openenv_zmq.protocol import encode, error_message
from tests.unit.test_broker_core import CLIENT, W1, W2, alloc, hello, on, register, reply, step


def scrape(status: dict[str, Any] | None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample the collector gives for ``status``, parsed back from the text format."""
    registry = CollectorRegistry()
    registry.register(BrokerCollector(lambda: status))
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_nothing_is_exported_before_the_first_snapshot() -> None:
    assert scrape(None) == {}


def test_counters_histograms_and_gauges_of_a_busy_core() -> None:
    core = BrokerCore(BrokerConfig(epoch=Epoch(0, 1)))
    worker = register(core, W1)
    register(core, W2)
    token = hello(core)
    group = alloc(core, token, 2)
    on_w1 = on(group, worker)
    assert len(on_w1) == 1
    for request_id, answered_at in ((10, 1.0012), (11, 1.04)):
        core.on_client(CLIENT, step(worker, on_w1, request_id, token, group.group), 1.0)
        core.on_worker(W1, reply(CLIENT, request_id, on_w1), answered_at)
    core.on_client(CLIENT, step(worker, on_w1, 12, token, group.group), 1.1)
    core.on_worker(W1, [CLIENT, *encode(error_message(12, "EnvExecutionError", "boom"))], 1.18)
    core.on_client(CLIENT, step(worker, on_w1, 13, token, group.group), 1.3)  # in flight
    samples = scrape(core.status())
    assert samples[("openenv_zmq_requests_total", (("op", "step"),))] == 4
    assert samples[("openenv_zmq_requests_total", (("op", "reset"),))] == 0
    assert samples[("openenv_zmq_env_steps_total", ())] == 4
    assert samples[("openenv_zmq_errors_total", (("type", "EnvExecutionError"),))] == 1
    assert samples[("openenv_zmq_request_seconds_count", (("op", "step"),))] == 3
    step_sum = samples[("openenv_zmq_request_seconds_sum", (("op", "step"),))]
    assert step_sum == pytest.approx(0.0012 + 0.04 + 0.08)
    buckets = {
        dict(labels)["le"]: value
        for (name, labels), value in samples.items()
        if name == "openenv_zmq_request_seconds_bucket" and dict(labels)["op"] == "step"
    }
    # cumulative, as Prometheus reads them: 1.2 ms, 40 ms and 80 ms
    bounds = ("0.001", "0.0015", "0.03", "0.05", "0.07", "0.1")
    assert [buckets[le] for le in bounds] == [0, 1, 1, 2, 2, 3]
    assert buckets["+Inf"] == 3
    assert samples[("openenv_zmq_workers_live", ())] == 2
    assert samples[("openenv_zmq_env_slots_used", ())] == 2
    assert samples[("openenv_zmq_env_slots_free", ())] == 14
    assert samples[("openenv_zmq_client_sessions", ())] == 1
    assert samples[("openenv_zmq_requests_in_flight", ())] == 1
