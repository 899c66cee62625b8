"""``python -m bench.stragglers``: ``send``/``recv`` against lockstep ``step`` when steps vary.

Each env sleeps a random 0-20 ms per step, so in every lockstep batch some worker is the
straggler the whole batch waits for. Driving the envs with ``send``/``recv`` instead steps each
sub-batch again as soon as it comes back, so no worker waits for another. Both run for the same
time on the same cluster; the report is env-steps/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

from echo_env import EchoAction, EchoObservation
from echo_env.server.echo_environment import EchoEnvironment
from rich.console import Console
from rich.table import Table

from broker.bench import embedded_cluster
from openenv_zmq import BatchClient, EnvGroup

SLEEPY = "bench.stragglers:SleepyEchoEnv"


class SleepyEchoEnv(EchoEnvironment):
    """Echo whose every step takes a random 0-20 ms."""

    def step(
        self, action: EchoAction, timeout_s: float | None = None, **kwargs: Any
    ) -> EchoObservation:
        time.sleep(random.uniform(0.0, 0.020))
        return super().step(action)


def lockstep(envs: EnvGroup, duration: float) -> float:
    """Env-steps/s of full-batch ``step`` calls."""
    actions = [EchoAction(message="x")] * len(envs)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < duration:
        steps += len(envs.step(actions))
    return steps / (time.perf_counter() - start)


def recv_driven(envs: EnvGroup, duration: float) -> float:
    """Env-steps/s when every sub-batch is sent again as soon as it comes back."""
    action = EchoAction(message="x")
    envs.send([action] * len(envs))
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < duration:
        done = envs.recv(timeout=10)
        steps += len(done)
        envs.send([action] * len(done), env_ids=done.env_ids)
    elapsed = time.perf_counter() - start
    in_flight = len(envs)
    while in_flight:  # collect what is still out before the group is closed
        in_flight -= len(envs.recv(timeout=10))
    return steps / elapsed


def run(num_envs: int, workers: int, duration: float) -> None:
    with (
        embedded_cluster(workers, [SLEEPY], num_envs) as address,
        BatchClient(address) as client,
    ):
        client.wait_for_workers(workers, SLEEPY, 60)
        envs = client.make(SLEEPY, num_envs)
        envs.reset()
        locked = lockstep(envs, duration)
        driven = recv_driven(envs, duration)
    table = Table(title=f"{num_envs} envs stepping 0-20 ms each, {workers} workers")
    for column in ("lockstep step()", "send()/recv()", "ratio"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{locked:,.0f} env-steps/s", f"{driven:,.0f} env-steps/s", f"{driven / locked:.2f}x"
    )
    Console().print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stragglers", description=__doc__)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args(argv)
    run(args.num_envs, args.workers, args.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
