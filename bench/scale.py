"""``python -m bench.scale [--num-envs N] [--workers W] [--providers local,docker]``: many echo
instances at once.

Makes, resets and steps ``N`` echo envs (default 100,000) over ``W`` workers (default 4) started
by each provider in turn (default: local processes only; ``docker`` runs them as containers of
``--image``, as ``openenv-broker start --provider docker`` does), and reports for each the time
of each call, the broker's resident memory, and the workers' memory per instance (resident
memory after ``make`` minus before, divided by the instances).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from echo_env import EchoAction
from rich.console import Console
from rich.table import Table

from bench.faults.cluster import descendants
from broker.bench import embedded_broker_pid, embedded_cluster
from broker.providers.docker import DEFAULT_IMAGE, LABEL_PID, DockerWorkers
from openenv_zmq import BatchClient

T = TypeVar("T")
BROKER_RSS_TARGET_MB = 200.0
INSTANCE_TARGET_BYTES = 2048


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def timed(call: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


@dataclass(frozen=True)
class Figures:
    provider: str
    start_s: float
    """From starting the broker to every worker live."""
    make_s: float
    reset_s: float
    step_s: float
    broker_mb: float
    bytes_per_instance: float
    failures: int


def worker_pids(provider: str) -> list[int]:
    """The host pids of the broker's worker processes: the broker's children, or for docker the
    processes under each container's init."""
    broker = embedded_broker_pid()
    if provider == "local":
        return sorted(descendants(broker))
    import docker  # only for --providers docker: the bench extra does not install it

    engine = docker.from_env()
    try:
        ours = f"{LABEL_PID}={broker}"
        containers = engine.containers.list(filters={"label": ours})
        inits = [c.attrs["State"]["Pid"] for c in containers]
    finally:
        engine.close()
    return sorted(pid for init in inits for pid in descendants(init))


def measure(provider: str, num_envs: int, workers: int, image: str) -> Figures:
    capacity = -(-num_envs // workers)
    spec = DockerWorkers(image=image) if provider == "docker" else None
    started = time.perf_counter()
    with (
        embedded_cluster(workers, ["echo"], capacity, docker=spec) as address,
        BatchClient(address, timeout=600) as client,
    ):
        client.wait_for_workers(workers, "echo", 120)
        start_s = time.perf_counter() - started
        pids = worker_pids(provider)
        before = {pid: rss_bytes(pid) for pid in pids}
        envs, make_s = timed(lambda: client.make("echo", num_envs))
        after = {pid: rss_bytes(pid) for pid in pids}
        reset, reset_s = timed(lambda: envs.reset(seed=0))
        step, step_s = timed(lambda: envs.step([EchoAction(message="hi")] * num_envs))
        broker_mb = rss_bytes(embedded_broker_pid()) / 2**20
        per_instance = sum(after[p] - before[p] for p in pids) / num_envs
        failures = len(reset.errors) + len(step.errors)
        envs.close()
    return Figures(provider, start_s, make_s, reset_s, step_s, broker_mb, per_instance, failures)


def run(num_envs: int, workers: int, providers: Sequence[str], image: str) -> int:
    table = Table(
        title=f"{num_envs:,} echo envs over {workers} workers",
        caption=f"targets: broker RSS < {BROKER_RSS_TARGET_MB:.0f} MB; aim: worker bytes per"
        f" idle env (B/env) < {INSTANCE_TARGET_BYTES}",
    )
    columns = ["workers", "start", "make", "reset", "step", "steps/s", "broker RSS", "B/env"]
    for column in columns:
        table.add_column(column, justify="right")
    code = 0
    for provider in providers:
        f = measure(provider, num_envs, workers, image)
        table.add_row(
            provider,
            f"{f.start_s:.2f} s",
            f"{f.make_s:.2f} s",
            f"{f.reset_s:.2f} s",
            f"{f.step_s:.2f} s",
            f"{num_envs / f.step_s:,.0f}",
            f"{f.broker_mb:.0f} MB",
            f"{f.bytes_per_instance:,.0f}",
        )
        if f.failures:
            print(f"{provider}: {f.failures} env(s) failed", file=sys.stderr)
        if f.failures or f.broker_mb >= BROKER_RSS_TARGET_MB:
            code = 1
    Console().print(table)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--num-envs", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--providers",
        default="local",
        type=lambda text: text.split(","),
        help="comma-separated: local, docker",
    )
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="the docker workers' image")
    args = parser.parse_args(argv)
    unknown = set(args.providers) - {"local", "docker"}
    if unknown:
        parser.error(f"--providers: {', '.join(sorted(unknown))} is not local or docker")
    return run(args.num_envs, args.workers, args.providers, args.image)


if __name__ == "__main__":
    sys.exit(main())
