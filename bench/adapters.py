"""``python -m bench.adapters [--steps 2000] [--rounds 5]``: what the trainer adapters add.

Run from the repository root. On one embedded cluster (two local ``cartpole`` workers), for 64
and 1,024 envs, times ``step`` of the raw :class:`EnvGroup`, of the Gymnasium adapter
(:class:`openenv_zmq.gym.ZmqVectorEnv`, NextStep) and of the SB3 adapter
(:class:`openenv_zmq.sb3.ZmqVecEnv`, same-step autoreset, against a raw group in that mode),
each with the same actions. The four take turns call by call, so that drift on a busy machine
falls on all of them alike; each figure is the median over ``--rounds`` rounds of the mean step
time.
Prints the adapters' ratios to the raw group, and the Gymnasium adapter's target (at most 1.10;
the SB3 adapter has none: it builds the one info dict per env that SB3's API asks for).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from broker.bench import cluster_at
from openenv_zmq import BatchClient
from openenv_zmq.gym import ZmqVectorEnv
from openenv_zmq.sb3 import ZmqVecEnv

SIZES = (64, 1024)
TARGET = 1.10
"""An adapter's step time over the raw group's, at most (the trainer drop-in issue)."""
WARMUP = 200


def mean_steps(ways: Sequence[Callable[[], object]], steps: int) -> list[float]:
    """Seconds per call of each of ``ways``, called in turn ``steps`` times each."""
    totals = [0.0] * len(ways)
    for _ in range(steps):
        for i, step in enumerate(ways):
            start = time.perf_counter()
            step()
            totals[i] += time.perf_counter() - start
    return [total / steps for total in totals]


def measure(address: str, num_envs: int, steps: int, rounds: int) -> dict[str, float]:
    """Median over ``rounds`` of each way's mean step seconds at ``num_envs`` envs."""
    actions = np.random.default_rng(0).integers(0, 2, num_envs)
    with BatchClient(address, timeout=60) as client:
        raw = client.make("cartpole", num_envs, autoreset="next_step")
        raw.reset(seed=0)
        raw_same = client.make("cartpole", num_envs, autoreset="same_step")
        raw_same.reset(seed=0)
        gym = ZmqVectorEnv(client.make("cartpole", num_envs, autoreset="next_step"))
        gym.reset(seed=0)
        sb3 = ZmqVecEnv(client.make("cartpole", num_envs, autoreset="same_step"))
        sb3.reset()
        ways: dict[str, Callable[[], object]] = {
            "raw group (next_step)": lambda: raw.step(actions),
            "gymnasium ZmqVectorEnv": lambda: gym.step(actions),
            "raw group (same_step)": lambda: raw_same.step(actions),
            "sb3 ZmqVecEnv": lambda: sb3.step(actions),
        }
        mean_steps(list(ways.values()), WARMUP)
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(rounds):
            for name, seconds in zip(ways, mean_steps(list(ways.values()), steps), strict=True):
                times[name].append(seconds)
        gym.close()
        sb3.close()
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps per way per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    table = Table(title="trainer adapters: step time against the raw group")
    for column in ("envs", "way", "step", "ratio", "target"):
        table.add_column(column, justify="right" if column != "way" else "left")
    met = True
    with cluster_at(None, "cartpole", workers=2, capacity=2 * 4 * max(SIZES)) as address:
        for num_envs in SIZES:
            steps = max(args.steps * 64 // num_envs, 100)
            result = measure(address, num_envs, steps, args.rounds)
            for name, seconds in result.items():
                base = (
                    "raw group (same_step)" if name.startswith("sb3") else "raw group (next_step)"
                )
                ratio = seconds / result[base]
                adapter = not name.startswith("raw")
                targeted = name.startswith("gymnasium")
                met &= not targeted or ratio <= TARGET
                table.add_row(
                    f"{num_envs:,}",
                    name,
                    f"{seconds * 1e6:,.0f} µs",
                    f"{ratio:.3f}" if adapter else "",
                    f"≤ {TARGET:.2f}" if targeted else "",
                )
    Console().print(table)
    print("target met" if met else "target NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
