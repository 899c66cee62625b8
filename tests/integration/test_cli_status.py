"""Seeing the cluster: ``status`` (where each worker runs), ``status --watch`` and the
Prometheus metrics of ``start --metrics-port``, with real processes on random ports."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from openenv_zmq import BatchClient
from openenv_zmq.errors import NoWorkerAvailable
from openenv_zmq.protocol.schema import MAX_LABEL_CHARS
from tests.processes import REPO_ROOT, Processes, cli, free_port, wait_until

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli(*args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, env=env
    )


def status_json(frontend: str) -> dict[str, Any]:
    done = run("status", "--connect", frontend, "--json")
    assert done.returncode == 0, done.stderr
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def test_status_shows_where_each_worker_runs_and_its_age(procs: Processes) -> None:
    broker = procs.broker(workers=1)
    procs.worker(broker.backend)
    procs.worker(broker.backend, extra=("--provider", "kubernetes", "--instance", "pod-7"))
    broker.wait_for_workers(3)
    rows = {w["provider"]: w for w in status_json(broker.frontend)["workers"]}
    assert set(rows) == {"local", "remote", "kubernetes"}
    host = socket.gethostname()
    assert rows["local"]["name"] == "local-0"
    assert {w["host"] for w in rows.values()} == {host}
    assert (rows["local"]["instance"], rows["remote"]["instance"]) == (None, None)
    assert rows["kubernetes"]["instance"] == "pod-7"
    assert all(0 <= w["age_s"] < 60 for w in rows.values())
    shown = run("status", "--connect", broker.frontend, env={**os.environ, "COLUMNS": "80"})
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, shown.stdout
    text = shown.stdout
    pid = rows["local"]["pid"]
    assert f"local @ {host}, pid {pid}" in re.sub(r"\s+", " ", text)
    assert "remote @" in text and "kubernetes @" in text and "pod-7" in text
    assert re.search(r"local-0 +ready +echo +0 +4,096 +0 +\d+s +\d+\.\ds", text), text


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_start_serves_prometheus_metrics(procs: Processes) -> None:
    port = free_port()
    broker = procs.broker(workers=2, extra=("--metrics-port", str(port)))
    with broker.client() as client:
        envs = client.make("echo", num_envs=8)
        envs.reset()
        for _ in range(5):
            envs.step([{"message": "hi"}] * 8).raise_for_errors()
        with pytest.raises(NoWorkerAvailable):
            client.make("no-such-env", num_envs=1)
        steps = ("openenv_zmq_requests_total", (("op", "step"),))
        # the routing thread publishes what a scrape reads twice a second
        wait_until(lambda: scrape(port).get(steps) == 10, 10, "the steps in the metrics")
        samples = scrape(port)
    # 8 envs over 2 workers: each batch is a request to each
    assert samples[("openenv_zmq_requests_total", (("op", "reset"),))] == 2
    assert samples[("openenv_zmq_requests_total", (("op", "create"),))] == 2
    assert samples[("openenv_zmq_env_steps_total", ())] == 40
    assert samples[("openenv_zmq_errors_total", (("type", "NoWorkerAvailable"),))] == 1
    count = samples[("openenv_zmq_request_seconds_count", (("op", "step"),))]
    assert count == 10
    assert samples[("openenv_zmq_request_seconds_bucket", (("le", "+Inf"), ("op", "step")))] == 10
    assert 0 < samples[("openenv_zmq_request_seconds_sum", (("op", "step"),))] < 10
    assert samples[("openenv_zmq_workers_live", ())] == 2
    assert samples[("openenv_zmq_env_slots_used", ())] == 8
    assert samples[("openenv_zmq_env_slots_free", ())] == 2 * 4096 - 8
    assert samples[("openenv_zmq_client_sessions", ())] == 1
    assert samples[("openenv_zmq_requests_in_flight", ())] == 0
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert broker.stop() == 0
    with pytest.raises(urllib.error.URLError, match="Connection refused"):  # the port is freed
        scrape(port)


def test_status_watch_is_a_live_view_that_ctrl_c_ends(procs: Processes) -> None:
    broker = procs.broker(workers=1)
    # As a terminal would see it, so that every refresh is drawn, 80 columns wide.
    env = {**os.environ, "TTY_COMPATIBLE": "1", "TERM": "xterm", "COLUMNS": "80"}
    watch = subprocess.Popen(
        cli("status", "--connect", broker.frontend, "--watch", "--interval", "0.3"),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        with BatchClient(broker.frontend) as client:
            envs = client.make("echo", num_envs=16)
            envs.reset()
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                envs.step([{"message": "hi"}] * 16)
            # Ctrl-C while envs step, so that the last refresh saw them
            watch.send_signal(signal.SIGINT)
            out, err = watch.communicate(timeout=20)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    assert watch.returncode == 0, err
    assert "Traceback" not in err
    text = ANSI.sub("", out)
    assert text.count("(Ctrl-C to stop)") >= 4, text  # refreshed every 0.3 s for 2 s
    assert max(len(line) for line in text.splitlines()) <= 80
    last = text[text.rindex("(Ctrl-C to stop)") :]
    assert "local-0" in last and "local @ " in last
    assert re.search(r"env-steps/s [1-9][\d,]*, requests/s [1-9]", last), last
    assert re.search(r"step +[1-9][\d,]* +[\d.]+ [mµ]?s +[\d.]+ [mµ]?s", last), last
    assert "errors last 0.3s: none" in last


def test_status_watch_of_a_missing_broker_fails_with_a_message() -> None:
    done = run("status", "--watch", "--connect", "tcp://127.0.0.1:9", "--timeout", "0.3")
    assert done.returncode == 1
    assert "BrokerUnreachable" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_a_metrics_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["start", "--workers", "0", "--bind", "tcp://127.0.0.1:*"]
        args += ["--worker-bind", "tcp://127.0.0.1:*", "--metrics-port", str(port)]
        done = run(*args)
    assert done.returncode == 1, done
    said = (done.stdout + done.stderr).strip().splitlines()
    assert said == [
        f"error: TransportError: cannot serve metrics on http://127.0.0.1:{port}/metrics:"
        " Address already in use"
    ], said


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("start", "--metrics-port", "0"), "--metrics-port"),
        (("start", "--metrics-port", "65536"), "--metrics-port"),
        (("start", "--metrics-port", "x"), "--metrics-port"),
        (("status", "--watch", "--interval", "0"), "--interval"),
        (("status", "--watch", "--interval", "-1"), "--interval"),
        (("status", "--watch", "--json"), "--json"),
        (("worker", "--connect", "tcp://127.0.0.1:9", "--provider", ""), "provider"),
        (
            ("worker", "--connect", "tcp://127.0.0.1:9", "--instance", "i" * (MAX_LABEL_CHARS + 1)),
            "instance",
        ),
    ],
)
def test_bad_values_are_usage_errors(args: tuple[str, ...], named: str) -> None:
    done = run(*args)
    assert done.returncode == 2, done
    assert named in done.stderr and "Traceback" not in done.stderr
