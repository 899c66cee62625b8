"""``python -m bench.waiting``: batch latency of envs whose steps wait, against the serial path.

An agentic env spends its step waiting (a tool call, a subprocess, HTTP, a model). Three ways
to host 256 envs whose step waits 10 ms, on 2 workers:

- ``async``: the env's own ``async def step_async`` awaits the wait; the worker awaits a whole
  sub-batch together. Target: batch p50 <= 30 ms.
- ``threads``: a sync step blocks for the wait; ``make(..., concurrency=64)`` runs 64 at once per
  worker. Target: batch p50 <= 60 ms.
- ``serial``: the same blocking env stepped inline, one after the other (what a worker did before
  it could run calls concurrently): the baseline, about ``envs / workers * wait``.

The floor is what one wait costs plus a round trip of the same batch of echo envs (no wait).
Reports p50 / p99 batch latency, each case's ratio to its target and its speed-up over serial.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from echo_env import EchoAction, EchoObservation
from echo_env.server.echo_environment import EchoEnvironment
from rich.console import Console
from rich.table import Table

from broker.bench import embedded_cluster
from openenv_zmq import BatchClient

WAIT_SECONDS = 0.010
ASYNC_WAIT = "bench.waiting:AsyncWaitEcho"
BLOCKING_WAIT = "bench.waiting:BlockingWaitEcho"
TARGETS_MS = {"async": 30.0, "threads": 60.0}


class AsyncWaitEcho(EchoEnvironment):
    """Echo whose step awaits 10 ms, as an env awaiting a tool call does."""

    async def step_async(
        self, action: EchoAction, timeout_s: float | None = None, **kwargs: Any
    ) -> EchoObservation:
        await asyncio.sleep(WAIT_SECONDS)
        return super().step(action)


class BlockingWaitEcho(EchoEnvironment):
    """Echo whose step blocks 10 ms, as an env calling a subprocess or HTTP synchronously does."""

    def step(
        self, action: EchoAction, timeout_s: float | None = None, **kwargs: Any
    ) -> EchoObservation:
        time.sleep(WAIT_SECONDS)
        return super().step(action)


def latencies(client: BatchClient, env: str, num_envs: int, batches: int, **options: Any) -> Any:
    """Seconds per full-batch step, after one warm-up batch."""
    envs = client.make(env, num_envs, **options)
    envs.reset()
    actions = [EchoAction(message="x")] * num_envs
    envs.step(actions).raise_for_errors()
    out = []
    for _ in range(batches):
        start = time.perf_counter()
        envs.step(actions).raise_for_errors()
        out.append(time.perf_counter() - start)
    envs.close()
    return out


def run(num_envs: int, workers: int, concurrency: int, batches: int) -> dict[str, list[float]]:
    with (
        embedded_cluster(workers, ["echo", ASYNC_WAIT, BLOCKING_WAIT], num_envs) as address,
        BatchClient(address) as client,
    ):
        client.wait_for_workers(workers, BLOCKING_WAIT, 60)
        return {
            "floor": latencies(client, "echo", num_envs, batches),
            "async": latencies(client, ASYNC_WAIT, num_envs, batches),
            "threads": latencies(client, BLOCKING_WAIT, num_envs, batches, concurrency=concurrency),
            # each serial batch takes about num_envs / workers * 10 ms: a few are enough
            "serial": latencies(client, BLOCKING_WAIT, num_envs, 3),
        }


def report(results: dict[str, list[float]], num_envs: int, workers: int, concurrency: int) -> None:
    p50 = {case: statistics.median(values) * 1e3 for case, values in results.items()}
    floor = p50["floor"] + WAIT_SECONDS * 1e3
    table = Table(
        title=(
            f"{num_envs} envs waiting {WAIT_SECONDS * 1e3:g} ms per step, {workers} workers "
            f"(threads: concurrency={concurrency}); floor = echo round trip + one wait = "
            f"{floor:.1f} ms"
        )
    )
    for column in ("case", "batches", "p50", "p99", "target", "p50 / target", "serial / p50"):
        table.add_column(column, justify="right")
    for case, values in results.items():
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3
        target = TARGETS_MS.get(case)
        table.add_row(
            case,
            str(len(values)),
            f"{p50[case]:.1f} ms",
            f"{p99:.1f} ms",
            "" if target is None else f"<= {target:g} ms",
            "" if target is None else f"{p50[case] / target:.2f}",
            f"{p50['serial'] / p50[case]:.1f}x",
        )
    Console().print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.waiting", description=__doc__)
    parser.add_argument("--num-envs", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batches", type=int, default=50)
    args = parser.parse_args(argv)
    results = run(args.num_envs, args.workers, args.concurrency, args.batches)
    report(results, args.num_envs, args.workers, args.concurrency)
    missed = [c for c, t in TARGETS_MS.items() if statistics.median(results[c]) * 1e3 > t]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
