"""``python -m bench.gateway [--sessions 64] [--duration 5] [--loop asyncio]``: the gateway
against OpenEnv's server.

Run from the repository root. Measures, in one run and with the same client (openenv-core's
``GenericEnvClient``), OpenEnv's own server for an echo env and this runtime's gateway (uvicorn
serving :func:`create_gateway_app` in a spawned process, in front of an embedded broker with two
local echo workers): steps/s with ``--sessions`` concurrent sessions, and the median step round
trip of a single session. Both servers run on the same uvicorn event loop (``--loop``). Prints
both with the ratios and the targets; the two servers run one after the other, never at once, so
that neither takes cores from the other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import statistics
import sys
import time
import urllib.request
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from openenv.core.generic_client import GenericEnvClient  # type: ignore[import-untyped]
from rich.table import Table

from bench.baselines import CLUSTER_START_TIMEOUT, WARMUP
from bench.console import add_sessions_and_duration, report_console
from bench.openenv_server import (
    EVENT_LOOPS,
    MESSAGE_TIMEOUT,
    SERVER_START_TIMEOUT,
    STEP_DATA,
    openenv_echo_server,
    served,
    step_sessions,
)
from broker.bench import cluster_at
from openenv_zmq.client.sync import BatchClient
from openenv_zmq.gateway.app import create_gateway_app

ENV = "echo"
WORKERS = 2
DEFAULT_SESSIONS = 64
DEFAULT_DURATION = 5.0
MAX_LATENCY_STEPS = 1_000_000
"""Count bound on the single-session loop (far above what ``duration`` allows)."""
MEASURE_GRACE = 60.0
"""Seconds a measurement may overrun warm-up plus duration (connecting, a slow last step)."""
THROUGHPUT_GOAL = 1.5
"""The gateway's rate at ``--sessions`` against OpenEnv's server's: the per-batch-cost issue's."""
LATENCY_GOAL = 2.0
"""One session's step p50 against OpenEnv's server's, at most."""


@contextlib.contextmanager
def gateway_server(broker: str, sessions: int, loop: str) -> Iterator[str]:
    """A spawned uvicorn process (event ``loop``) serving the gateway for up to ``sessions``
    sessions of ``ENV`` on ``broker``; yields its base URL once its lifespan has started
    (``/health`` answers). Stopped with SIGTERM on exit, which closes its env group while the
    broker still runs."""
    make_app = functools.partial(create_gateway_app, broker, ENV, max_sessions=sessions)
    with served(make_app, "the gateway", backlog=max(128, sessions), loop=loop) as base_url:
        # The socket listens before the lifespan has made the env group: this request is held
        # until it has, and fails at once if the lifespan failed (the process exits).
        with urllib.request.urlopen(f"{base_url}/health", timeout=SERVER_START_TIMEOUT):
            pass
        yield base_url


async def session_step_p50(base_url: str, warmup: float, duration: float) -> float:
    """Median seconds of one ``step`` of a single session (its only request in flight), measured
    for ``duration`` seconds after ``warmup``."""
    client = GenericEnvClient(base_url=base_url, message_timeout_s=MESSAGE_TIMEOUT)
    try:
        await client.connect()
        await client.reset()
        start = time.perf_counter() + warmup
        end = start + duration
        latencies: list[float] = []
        for _ in range(MAX_LATENCY_STEPS):
            sent = time.perf_counter()
            await client.step(STEP_DATA)
            received = time.perf_counter()
            if sent >= start:
                latencies.append(received - sent)
            if received >= end:
                break
        return statistics.median(latencies)
    finally:
        await client.close()


@dataclass(frozen=True)
class ServerResult:
    steps_per_s: float
    step_p50: float
    """Seconds."""


def _bounded(coroutine: Coroutine[Any, Any, float], warmup: float, duration: float) -> float:
    return asyncio.run(asyncio.wait_for(coroutine, warmup + duration + MEASURE_GRACE))


def measure(base_url: str, sessions: int, duration: float) -> ServerResult:
    """The single-session p50 first, then the rate of ``sessions`` concurrent sessions."""
    step_p50 = _bounded(session_step_p50(base_url, WARMUP, duration), WARMUP, duration)
    rate = _bounded(step_sessions(base_url, sessions, WARMUP, duration), WARMUP, duration)
    return ServerResult(rate, step_p50)


def measure_openenv(sessions: int, duration: float, loop: str) -> ServerResult:
    # One slot more than the sessions: the latency session may still be releasing its slot
    # when the concurrent sessions connect.
    with openenv_echo_server(sessions + 1, loop) as base_url:
        return measure(base_url, sessions, duration)


def measure_gateway(sessions: int, duration: float, loop: str) -> ServerResult:
    with cluster_at(None, ENV, WORKERS, sessions + 1) as broker:
        with BatchClient(broker, connect_timeout=CLUSTER_START_TIMEOUT) as client:
            client.wait_for_workers(WORKERS, ENV, CLUSTER_START_TIMEOUT)
        with gateway_server(broker, sessions + 1, loop) as base_url:
            return measure(base_url, sessions, duration)


def results_table(openenv: ServerResult, gateway: ServerResult, sessions: int, loop: str) -> Table:
    table = Table(
        title=f"OpenEnv /ws, echo env, GenericEnvClient, uvicorn on {loop} ({os.cpu_count()} cores)"
    )
    for column in ("measure", "OpenEnv server", "gateway", "gateway ÷ OpenEnv", "goal", "status"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    rows = (
        (
            f"steps/s, {sessions} sessions",
            f"{openenv.steps_per_s:,.0f}",
            f"{gateway.steps_per_s:,.0f}",
            gateway.steps_per_s / openenv.steps_per_s,
            THROUGHPUT_GOAL,
            False,
        ),
        (
            "step p50, 1 session",
            f"{openenv.step_p50 * 1e3:.3f} ms",
            f"{gateway.step_p50 * 1e3:.3f} ms",
            gateway.step_p50 / openenv.step_p50,
            LATENCY_GOAL,
            True,
        ),
    )
    for name, openenv_value, gateway_value, ratio, goal, at_most in rows:
        met = ratio <= goal if at_most else ratio >= goal
        status = "[green]met[/]" if met else "[red]not met[/]"
        goal_text = f"{'<=' if at_most else '>='} {goal:g}x"
        table.add_row(name, openenv_value, gateway_value, f"{ratio:,.2f}x", goal_text, status)
    return table


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway",
        description="Compare the gateway with OpenEnv's own server, both serving an echo env.",
    )
    add_sessions_and_duration(
        parser,
        sessions=DEFAULT_SESSIONS,
        duration=DEFAULT_DURATION,
        sessions_help="concurrent sessions for the rate",
    )
    parser.add_argument(
        "--loop",
        choices=EVENT_LOOPS,
        default="asyncio",
        help="uvicorn's event loop for both servers (default asyncio, as openenv-core installs)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure both servers and print the table. Returns 0: targets not met are results."""
    args = parse_args(argv)
    console = report_console()
    console.print(f"OpenEnv's server: {args.sessions} sessions, {args.duration:g} s per measure")
    openenv = measure_openenv(args.sessions, args.duration, args.loop)
    console.print(f"the gateway ({WORKERS} workers): {args.sessions} sessions")
    gateway = measure_gateway(args.sessions, args.duration, args.loop)
    console.print(results_table(openenv, gateway, args.sessions, args.loop))
    return 0


if __name__ == "__main__":
    sys.exit(main())
