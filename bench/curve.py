"""``python -m bench.curve [--quick] [--duration S] [--json]``: what CURVE costs.

Steps echo (64 and 1,024 envs) and CartPole (256 and 8,192 envs) in full batches through two
embedded clusters alike in all but CURVE: a broker and 2 local workers hosting both envs, on
127.0.0.1 TCP ports (where CURVE is used; ipc sockets need none), one cluster plain and one with
CURVE on both sockets, its client holding a key the broker admits. Both run at once and each
size is measured on one, then the other, twice (plain, CURVE, CURVE, plain), so a drift cancels
out of the means; the report is env-steps/s of each and their ratio (CURVE over plain).
``--quick`` measures echo 64 and CartPole 256 for 0.5 s each time (under 20 s in all). Other
load on the machine skews one side of a ratio: run it on an idle machine.

CURVE encrypts every frame on every hop (client -> broker -> worker and back), so its cost
grows with the bytes a batch carries: small structured batches pay the per-message cost,
large array batches the per-byte cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from rich.console import Console
from rich.table import Table

from bench.baselines import ActionsFactory, broker_keys, cartpole_actions, echo_actions, runtime
from broker.bench import embedded_cluster
from openenv_zmq.client.sync import BatchClient

WORKERS = 2
START_TIMEOUT = 60.0
CASES: dict[str, Sequence[int]] = {"echo": (64, 1024), "cartpole": (256, 8192)}
QUICK_CASES: dict[str, Sequence[int]] = {"echo": (64,), "cartpole": (256,)}
DURATION = 3.0
QUICK_DURATION = 0.5
ACTIONS: dict[str, ActionsFactory] = {"echo": echo_actions, "cartpole": cartpole_actions}


@dataclass(frozen=True)
class Cost:
    env: str
    num_envs: int
    plain: float
    """env-steps/s without CURVE"""
    curve: float
    """env-steps/s with CURVE"""

    @property
    def ratio(self) -> float:
        return self.curve / self.plain


def measure(cases: dict[str, Sequence[int]], duration: float) -> list[Cost]:
    envs = list(cases)
    # Per worker: room for the largest group of any env, were it all placed on one worker.
    capacity = max(max(sizes) for sizes in cases.values())
    costs = []
    with (
        broker_keys() as keys,
        embedded_cluster(WORKERS, envs, capacity, transport="tcp") as plain,
        embedded_cluster(WORKERS, envs, capacity, transport="tcp", curve=keys) as curved,
    ):
        # Workers still starting on one cluster would slow whatever is measured on the other.
        for address, client_keys in ((plain, None), (curved, keys.local_client)):
            with BatchClient(address, connect_timeout=START_TIMEOUT, curve_dir=client_keys) as c:
                for env in envs:
                    c.wait_for_workers(WORKERS, env, START_TIMEOUT)
        for env, sizes in cases.items():
            for n in sizes:
                rates: dict[bool, list[float]] = {False: [], True: []}
                # plain, CURVE, CURVE, plain: a drift over the four cancels out of the means
                for with_curve in (False, True, True, False):
                    rates[with_curve].append(
                        runtime(
                            env,
                            n,
                            WORKERS,
                            ACTIONS[env],
                            duration,
                            address=curved if with_curve else plain,
                            curve=keys.local_client if with_curve else None,
                        )
                    )
                costs.append(
                    Cost(env, n, statistics.mean(rates[False]), statistics.mean(rates[True]))
                )
    return costs


def table(costs: Sequence[Cost]) -> Table:
    result = Table(title=f"CURVE's cost: {WORKERS} workers, tcp on 127.0.0.1")
    for column in ("env", "envs", "plain env-steps/s", "CURVE env-steps/s", "CURVE / plain"):
        result.add_column(column, justify="right")
    for cost in costs:
        result.add_row(
            cost.env,
            f"{cost.num_envs:,}",
            f"{cost.plain:,.0f}",
            f"{cost.curve:,.0f}",
            f"{cost.ratio:.2f}x",
        )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.curve", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="echo 64 and CartPole 256, 0.5 s")
    parser.add_argument("--duration", type=float, default=None, help="seconds per measurement")
    parser.add_argument("--json", action="store_true", help="print the results as JSON lines")
    args = parser.parse_args(argv)
    duration = args.duration or (QUICK_DURATION if args.quick else DURATION)
    costs = measure(QUICK_CASES if args.quick else CASES, duration)
    if args.json:
        for cost in costs:
            print(json.dumps({**asdict(cost), "ratio": cost.ratio}))
    else:
        Console().print(table(costs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
