"""``python -m bench.ray_start [--quick] [--duration S] [--out PATH]``: Ray workers' start and
throughput beside local ones.

Starts a local Ray cluster with Ray's own test utility (``ray.cluster_utils.Cluster``) on
127.0.0.1: a head with no CPUs and two nodes of 4 logical CPUs each (this machine may have
fewer cores: Ray counts, it does not pin). Then two brokers, each in its own spawned process (so
neither shares the GIL with the client measuring it), on 127.0.0.1 TCP ports:

- one with a :class:`~broker.providers.ray.RayProvider` of 8 workers (``num_cpus=1`` each, so 4
  actors a node). Reported: how long ``provider.start`` took (the preflight's check of the
  cluster and ``ray.init``), and the time from that call to 8 Ray workers live in the broker's
  status (the cold start: the nodes start a Ray worker process for each actor);
- one with 8 local workers (``LocalProvider``, as ``openenv-broker start --workers 8``).

Echo with 1,024 envs is stepped in full batches through each, local, Ray, Ray, local, so a drift
cancels out of the means; the report is env-steps/s of each and their ratio (Ray over local).
The figures go to a table and, as JSON, to ``--out`` (``/tmp/openenv-zmq-ray-start.json``).
Other load on the machine skews both: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.synchronize import Event
from pathlib import Path
from queue import Empty
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.baselines import echo_actions, runtime
from bench.ray_cluster import local_ray_cluster
from broker.bench import embedded_cluster
from openenv_zmq.client.sync import BatchClient

WORKERS = 8
NUM_ENVS = 1024
NODES = 2
NODE_CPUS = 4
DURATION = 3.0
QUICK_DURATION = 1.0
START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
DEFAULT_OUT = Path("/tmp/openenv-zmq-ray-start.json")


@dataclass(frozen=True)
class Figures:
    workers: int
    num_envs: int
    connect_s: float
    """``provider.start``: the preflight (a child process connects to the cluster) and
    ``ray.init``."""
    start_to_live_s: float
    """From ``provider.start`` to every Ray worker live in the broker's status."""
    local_start_to_live_s: float
    """The same for the local workers, from the broker process's start."""
    local: float
    """env-steps/s with local workers"""
    ray: float
    """env-steps/s with Ray workers"""

    @property
    def ratio(self) -> float:
        return self.ray / self.local


def _run_ray_broker(
    ray_address: str, workers: int, capacity: int, report: multiprocessing.Queue[Any], stop: Event
) -> None:
    """The Ray broker's process: reports its client address, then when ``provider.start`` began
    and ended (``time.time()``, comparable across processes); routes until ``stop``."""
    from broker.core import BrokerConfig
    from broker.loop import BrokerServer
    from broker.providers.ray import RayProvider

    class Timed(RayProvider):
        def start(self, connect: str) -> None:
            began = time.time()
            super().start(connect)
            report.put(("started", began, time.time()))

    provider = Timed(workers, address=ray_address, envs=["echo"], capacity=capacity)
    server = BrokerServer("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", BrokerConfig(), provider)
    server.bind()
    report.put(("bound", server.frontend_address))

    def stop_when_told() -> None:
        stop.wait()
        server.stop()

    threading.Thread(target=stop_when_told, name="stop", daemon=True).start()
    server.run()


@contextlib.contextmanager
def ray_broker(ray_address: str) -> Iterator[tuple[str, float, float]]:
    """A broker process with :data:`WORKERS` Ray workers; yields its client address, the
    seconds ``provider.start`` took and the seconds from its call to every worker live."""
    context = multiprocessing.get_context("spawn")
    report: multiprocessing.Queue[Any] = context.Queue()
    stop = context.Event()
    process = context.Process(
        target=_run_ray_broker,
        args=(ray_address, WORKERS, NUM_ENVS, report, stop),
        name="openenv-ray-broker",
    )
    process.start()
    try:
        [_, address] = _next(report, process)
        [_, began, ended] = _next(report, process)
        with BatchClient(address, connect_timeout=START_TIMEOUT) as client:
            client.wait_for_workers(WORKERS, "echo", START_TIMEOUT)
        live = time.time()
        yield address, ended - began, live - began
    finally:
        stop.set()
        process.join(STOP_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join()
        process.close()
        report.close()


def _next(report: multiprocessing.Queue[Any], process: multiprocessing.process.BaseProcess) -> Any:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            return report.get(timeout=0.1)
        except Empty:
            if not process.is_alive():
                break
    raise RuntimeError(f"the Ray broker did not start (exit code {process.exitcode})")


def measure(duration: float) -> Figures:
    with local_ray_cluster(NODES, NODE_CPUS, object_store_mb=100) as cluster:
        ray_address = str(cluster.address)
        local_began = time.time()
        with embedded_cluster(WORKERS, ["echo"], NUM_ENVS, transport="tcp") as local:
            with BatchClient(local, connect_timeout=START_TIMEOUT) as client:
                client.wait_for_workers(WORKERS, "echo", START_TIMEOUT)
            local_live = time.time() - local_began
            with ray_broker(ray_address) as (ray, connect_s, start_to_live_s):
                rates: dict[str, list[float]] = {"local": [], "ray": []}
                # local, Ray, Ray, local: a drift over the four cancels out of the means
                for which, address in (
                    ("local", local),
                    ("ray", ray),
                    ("ray", ray),
                    ("local", local),
                ):
                    rates[which].append(
                        runtime("echo", NUM_ENVS, WORKERS, echo_actions, duration, address=address)
                    )
    return Figures(
        WORKERS,
        NUM_ENVS,
        connect_s,
        start_to_live_s,
        local_live,
        statistics.mean(rates["local"]),
        statistics.mean(rates["ray"]),
    )


def table(figures: Figures) -> Table:
    result = Table(
        title=f"{figures.workers} workers, echo {figures.num_envs:,} envs, tcp on 127.0.0.1"
        f" (Ray: {NODES} nodes of {NODE_CPUS} CPUs)"
    )
    for column in ("provider", "start to all live", "env-steps/s", "vs local"):
        result.add_column(column, justify="right")
    result.add_row(
        "local", f"{figures.local_start_to_live_s:.2f} s", f"{figures.local:,.0f}", "1.00x"
    )
    result.add_row(
        "ray",
        f"{figures.start_to_live_s:.2f} s (connect {figures.connect_s:.2f} s)",
        f"{figures.ray:,.0f}",
        f"{figures.ratio:.2f}x",
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ray_start", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DURATION:g} s a measurement")
    parser.add_argument("--duration", type=float, default=None, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON goes")
    args = parser.parse_args(argv)
    figures = measure(args.duration or (QUICK_DURATION if args.quick else DURATION))
    Console().print(table(figures))
    args.out.write_text(json.dumps({**asdict(figures), "ratio": figures.ratio}, indent=2) + "\n")
    print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
