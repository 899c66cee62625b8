"""``python -m bench.pool [--sessions 128] [--duration 5]``: a session pool against OpenEnv
clients on the gateway and against one batched client.

Run from the repository root. Measures, in one run against one embedded broker with two local
echo workers, env-steps/s of:

- ``--sessions`` threads, each stepping one session of a :class:`SessionPool` in a loop (what a
  trainer's rollout threads do), and the same with coroutines on an ``AsyncSessionPool``;
- the same thread loop over ``--sessions`` OpenEnv client sessions (openenv-core's
  ``GenericEnvClient(...).sync()``, one per thread) against this runtime's gateway (uvicorn in a
  spawned process, asyncio loop, as ``python -m bench.gateway`` serves it);
- one ``BatchClient`` stepping ``--sessions`` envs in full batches.

Prints them with the ratios and the targets: the pooled threads at least 10x the OpenEnv
clients, and at least 0.8x the batched client. The echo env steps in microseconds, so every
figure is the cost of the machinery around it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from echo_env import EchoAction
from openenv.core.generic_client import GenericEnvClient  # type: ignore[import-untyped]
from rich.console import Console
from rich.table import Table

from bench.baselines import CLUSTER_START_TIMEOUT, WARMUP
from bench.console import add_sessions_and_duration, report_console
from bench.gateway import gateway_server
from bench.openenv_server import MESSAGE_TIMEOUT, STEP_DATA
from broker.bench import cluster_at
from openenv_zmq import AsyncSessionPool, BatchClient, SessionPool

ENV = "echo"
WORKERS = 2
DEFAULT_SESSIONS = 128
DEFAULT_DURATION = 5.0
ACTION = EchoAction(**STEP_DATA)
JOIN_GRACE = 60.0
"""Seconds a measuring thread may overrun warm-up plus duration (a slow last step)."""
OPENENV_GOAL = 10.0
"""Pooled threads against the same threads on OpenEnv client sessions, at least."""
BATCH_GOAL = 0.8
"""Pooled threads against one ``BatchClient.step`` of as many envs, at least."""


@dataclass(frozen=True)
class Window:
    """The measured interval, on ``time.perf_counter``: after ``warmup``, for ``duration``."""

    start: float
    end: float

    @classmethod
    def after(cls, warmup: float, duration: float) -> Window:
        start = time.perf_counter() + warmup
        return cls(start, start + duration)

    def rate(self, steps: int) -> float:
        return steps / (self.end - self.start)


def step_until(window: Window, step: Callable[[], Any]) -> int:
    """Call ``step`` until the window ends; the calls that began inside it."""
    while time.perf_counter() < window.start:
        step()
    steps = 0
    while time.perf_counter() < window.end:
        step()
        steps += 1
    return steps


def in_threads(sessions: int, duration: float, open_session: Callable[[], Any]) -> float:
    """``sessions`` threads, each opening one session (a context manager with ``step``) and
    stepping it in a loop; returns their steps per second."""
    counts: list[int] = []
    failures: list[BaseException] = []
    ready = threading.Barrier(sessions + 1)
    window: list[Window] = []

    def run() -> None:
        try:
            with open_session() as env:
                env.reset()
                ready.wait()
                ready.wait()  # the window is set
                counts.append(step_until(window[0], lambda: env.step(ACTION)))
        except BaseException as exc:
            failures.append(exc)
            ready.abort()

    threads = [threading.Thread(target=run, name=f"session-{i}") for i in range(sessions)]
    for thread in threads:
        thread.start()
    try:
        ready.wait()
        window.append(Window.after(WARMUP, duration))
        ready.wait()
    except threading.BrokenBarrierError:
        pass
    for thread in threads:
        thread.join(WARMUP + duration + JOIN_GRACE)
    if failures:
        raise failures[0]
    return window[0].rate(sum(counts))


def pool_threads(broker: str, sessions: int, duration: float) -> float:
    with SessionPool(broker, env=ENV, size=sessions) as pool:
        return in_threads(sessions, duration, pool.session)


def pool_coroutines(broker: str, sessions: int, duration: float) -> float:
    async def main() -> float:
        async with AsyncSessionPool(broker, env=ENV, size=sessions) as pool:
            window = Window.after(WARMUP, duration)

            async def run() -> int:
                async with pool.session() as env:
                    await env.reset()
                    while time.perf_counter() < window.start:
                        await env.step(ACTION)
                    steps = 0
                    while time.perf_counter() < window.end:
                        await env.step(ACTION)
                        steps += 1
                    return steps

            return window.rate(sum(await asyncio.gather(*(run() for _ in range(sessions)))))

    return asyncio.run(main())


def openenv_threads(base_url: str, sessions: int, duration: float) -> float:
    def open_session() -> Any:
        client = GenericEnvClient(base_url=base_url, message_timeout_s=MESSAGE_TIMEOUT)
        return _DictSteps(client.sync())

    return in_threads(sessions, duration, open_session)


class _DictSteps:
    """An OpenEnv sync client that steps with the echo action's fields, as a generic client
    must."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __enter__(self) -> _DictSteps:
        self._client.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.__exit__(*exc)

    def reset(self) -> Any:
        return self._client.reset()

    def step(self, action: EchoAction) -> Any:
        return self._client.step(action.model_dump(exclude={"metadata"}))


def batched(broker: str, sessions: int, duration: float) -> float:
    with BatchClient(broker, connect_timeout=CLUSTER_START_TIMEOUT) as client:
        envs = client.make(ENV, num_envs=sessions)
        envs.reset()
        actions = [ACTION] * sessions
        window = Window.after(WARMUP, duration)
        return window.rate(sessions * step_until(window, lambda: envs.step(actions)))


@dataclass(frozen=True)
class Results:
    pool_threads: float
    pool_coroutines: float
    openenv_threads: float
    batched: float


def measure(sessions: int, duration: float, console: Console) -> Results:
    # Room for the pools, the gateway's sessions and the batched client's envs at once.
    with cluster_at(None, ENV, WORKERS, 4 * sessions) as broker:
        with BatchClient(broker, connect_timeout=CLUSTER_START_TIMEOUT) as client:
            client.wait_for_workers(WORKERS, ENV, CLUSTER_START_TIMEOUT)
        console.print(f"one BatchClient, {sessions} envs")
        batch = batched(broker, sessions, duration)
        console.print(f"SessionPool, {sessions} threads")
        threads = pool_threads(broker, sessions, duration)
        console.print(f"AsyncSessionPool, {sessions} coroutines")
        coroutines = pool_coroutines(broker, sessions, duration)
        console.print(f"the gateway, {sessions} threads with an OpenEnv client each")
        with gateway_server(broker, sessions, "asyncio") as base_url:
            openenv = openenv_threads(base_url, sessions, duration)
    return Results(threads, coroutines, openenv, batch)


def results_table(results: Results, sessions: int) -> Table:
    cores = os.cpu_count()
    table = Table(title=f"echo env, {sessions} sessions, {WORKERS} workers ({cores} cores)")
    for column in ("loop", "env-steps/s", "pooled threads ÷ this", "goal", "status"):
        table.add_column(column, justify="left" if column == "loop" else "right")
    rows: list[tuple[str, float, float | None]] = [
        (f"{sessions} threads, one SessionPool session each", results.pool_threads, None),
        (
            f"{sessions} coroutines, one AsyncSessionPool session each",
            results.pool_coroutines,
            None,
        ),
        (
            f"{sessions} threads, one OpenEnv client session each, on the gateway",
            results.openenv_threads,
            OPENENV_GOAL,
        ),
        (f"one BatchClient.step of {sessions} envs", results.batched, BATCH_GOAL),
    ]
    for name, rate, goal in rows:
        ratio = results.pool_threads / rate
        if goal is None:
            table.add_row(name, f"{rate:,.0f}", f"{ratio:,.2f}x", "", "")
            continue
        status = "[green]met[/]" if ratio >= goal else "[red]not met[/]"
        table.add_row(name, f"{rate:,.0f}", f"{ratio:,.2f}x", f">= {goal:g}x", status)
    return table


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pool",
        description="Compare a session pool with OpenEnv clients and with one batched client.",
    )
    add_sessions_and_duration(
        parser,
        sessions=DEFAULT_SESSIONS,
        duration=DEFAULT_DURATION,
        sessions_help="sessions (threads, coroutines, envs) per measurement",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the table. Returns 0: targets not met are results."""
    args = parse_args(argv)
    console = report_console()
    results = measure(args.sessions, args.duration, console)
    console.print(results_table(results, args.sessions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
