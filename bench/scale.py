"""``python -m bench.scale [--num-envs N] [--workers W]``: many echo instances at once.

Makes, resets and steps ``N`` echo envs (default 100,000) over ``W`` local workers (default 4)
and reports the time of each call, the broker's resident memory, and the workers' memory per
instance (resident memory after ``make`` minus before, divided by the instances per worker).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from echo_env import EchoAction
from rich.console import Console
from rich.table import Table

from broker.bench import embedded_cluster
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


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def timed(call: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def run(num_envs: int, workers: int) -> int:
    capacity = -(-num_envs // workers)
    with (
        embedded_cluster(workers, ["echo"], capacity) as address,
        BatchClient(address, timeout=600) as client,
    ):
        pids = [w["pid"] for w in client.wait_for_workers(workers, "echo", 60)]
        broker = parent_pid(pids[0])
        before = {pid: rss_bytes(pid) for pid in pids}
        envs, make_s = timed(lambda: client.make("echo", num_envs))
        after = {pid: rss_bytes(pid) for pid in pids}
        reset, reset_s = timed(lambda: envs.reset(seed=0))
        step, step_s = timed(lambda: envs.step([EchoAction(message="hi")] * num_envs))
        broker_mb = rss_bytes(broker) / 2**20
        per_instance = sum(after[p] - before[p] for p in pids) / num_envs
        failures = len(reset.errors) + len(step.errors)
        envs.close()
    table = Table(title=f"{num_envs:,} echo envs over {workers} workers")
    for column in ("make", "reset", "step", "broker RSS", "worker bytes / idle instance"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{make_s:.2f} s",
        f"{reset_s:.2f} s",
        f"{step_s:.2f} s",
        f"{broker_mb:.0f} MB (target < {BROKER_RSS_TARGET_MB:.0f})",
        f"{per_instance:,.0f} (aim < {INSTANCE_TARGET_BYTES})",
    )
    Console().print(table)
    if failures:
        print(f"{failures} env(s) failed", file=sys.stderr)
        return 1
    return 0 if broker_mb < BROKER_RSS_TARGET_MB else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--num-envs", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    return run(args.num_envs, args.workers)


if __name__ == "__main__":
    sys.exit(main())
