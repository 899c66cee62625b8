"""The comparison behind ``python bench/compare.py``: every system, in one run, on one machine.

Runs the baselines of :mod:`bench.baselines` and this runtime over a grid of env counts, then
prints the measurements and the target ratios (runtime ÷ baseline), and writes ``compare.json``
and ``compare.png``. A system that cannot run here (a missing package or adapter, an error) is
reported as n/a with its error; it never stops the comparison.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from bench import baselines

ECHO = "echo"
CARTPOLE = "cartpole"
GYM_CARTPOLE = f"gym:{baselines.GYM_ID}"
LATENCY = "latency"
FAMILIES = (ECHO, CARTPOLE)
"""Each family is one group of rows in the table and one subplot."""

STEPS_PER_S = "env-steps/s"
SECONDS = "s"

IN_PROCESS_ECHO = "in-process loop (validate, step, dump)"
IN_PROCESS_ECHO_RAW = "in-process loop (raw env.step)"
OPENENV_WS = "OpenEnv /ws (one session per env)"
IN_PROCESS_CARTPOLE = "in-process CartPoleVectorEnv"
GYM_SYNC = "gym SyncVectorEnv"
GYM_ASYNC = "gym AsyncVectorEnv"
ENVPOOL = "EnvPool (best setting)"
BATCH_OF_1 = "runtime batch-of-1 step p50"
DIRECT = "direct DEALER<->ROUTER p50"


def runtime_label(env: str, workers: int) -> str:
    return f"runtime {env}, {workers} worker{'s' if workers > 1 else ''}"


@dataclass(frozen=True)
class Grid:
    duration: float
    """Seconds measured per point (after the warm-up)."""
    echo: tuple[int, ...]
    cartpole: tuple[int, ...]
    gym: tuple[int, ...]
    """Env counts of the runtime hosting ``gym:CartPole-v1``."""
    workers: tuple[int, ...] = (1, 2)
    sessions: int = 64


FULL = Grid(duration=3.0, echo=(64, 256, 1024, 4096), cartpole=(256, 1024, 8192), gym=(256, 1024))
QUICK = Grid(duration=1.0, echo=(64, 1024), cartpole=(256, 8192), gym=(256,))


@dataclass(frozen=True)
class Measurement:
    env: str
    system: str
    num_envs: int
    value: float | None
    """In ``unit``; ``None`` when the system could not run (see ``error``)."""
    unit: str = STEPS_PER_S
    error: str = ""


Key = tuple[str, str, int]
"""(env, system, num_envs) of a measurement."""


@dataclass(frozen=True)
class Target:
    text: str
    ours: Key
    baseline: Key
    goal: float
    at_most: bool = False
    """The ratio must stay at or below ``goal`` (latency) rather than reach it."""

    def judge(self, results: dict[Key, Measurement]) -> dict[str, Any]:
        ours, baseline = results.get(self.ours), results.get(self.baseline)
        ratio = None
        status = "n/a"
        if ours is not None and baseline is not None and ours.value and baseline.value:
            ratio = ours.value / baseline.value
            met = ratio <= self.goal if self.at_most else ratio >= self.goal
            status = "met" if met else "not met"
        return {
            "target": self.text,
            "ours": None if ours is None else ours.value,
            "baseline": None if baseline is None else baseline.value,
            "ratio": ratio,
            "goal": self.goal,
            "at_most": self.at_most,
            "status": status,
        }


TARGETS = (
    Target(
        "echo 1024 envs, 2 workers >= 100x OpenEnv /ws at 64 sessions",
        (ECHO, runtime_label(ECHO, 2), 1024),
        (ECHO, OPENENV_WS, 64),
        100.0,
    ),
    Target(
        "echo 1024 envs, 2 workers >= 0.25x the in-process loop",
        (ECHO, runtime_label(ECHO, 2), 1024),
        (ECHO, IN_PROCESS_ECHO, 1024),
        0.25,
    ),
    Target(
        "cartpole 8192 envs, 2 workers >= 3x EnvPool best",
        (CARTPOLE, runtime_label(CARTPOLE, 2), 8192),
        (CARTPOLE, ENVPOOL, 8192),
        3.0,
    ),
    Target(
        "gym:CartPole-v1 256 envs, 2 workers >= 10x AsyncVectorEnv(256)",
        (CARTPOLE, runtime_label(GYM_CARTPOLE, 2), 256),
        (CARTPOLE, GYM_ASYNC, 256),
        10.0,
    ),
    Target(
        "gym:CartPole-v1 256 envs, 2 workers >= 0.5x SyncVectorEnv(256)",
        (CARTPOLE, runtime_label(GYM_CARTPOLE, 2), 256),
        (CARTPOLE, GYM_SYNC, 256),
        0.5,
    ),
    Target(
        "batch-of-1 p50 <= 2x direct DEALER<->ROUTER p50",
        (LATENCY, BATCH_OF_1, 1),
        (LATENCY, DIRECT, 1),
        2.0,
        at_most=True,
    ),
)


class Recorder:
    """Runs measurements one at a time, keeps them, and prints each as it lands."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.results: list[Measurement] = []

    def measure(
        self,
        env: str,
        system: str,
        num_envs: int,
        run: Callable[[], float],
        unit: str = STEPS_PER_S,
    ) -> None:
        start = time.perf_counter()
        try:
            measurement = Measurement(env, system, num_envs, run(), unit)
        except Exception as exc:  # any failure is this system's n/a, not the comparison's end
            measurement = Measurement(env, system, num_envs, None, unit, _describe(exc))
        self._keep(measurement, time.perf_counter() - start)

    def unavailable(self, env: str, system: str, num_envs: int, error: Exception) -> None:
        self._keep(Measurement(env, system, num_envs, None, error=_describe(error)), 0.0)

    def _keep(self, measurement: Measurement, seconds: float) -> None:
        self.results.append(measurement)
        m = measurement
        shown = _format_value(m.value, m.unit) if m.value is not None else f"n/a ({m.error})"
        self.console.print(
            f"  [dim]{seconds:5.1f} s[/dim]  {m.env:>8} {m.num_envs:>6,}  {m.system}: {shown}",
            highlight=False,
        )

    def by_key(self) -> dict[Key, Measurement]:
        return {(m.env, m.system, m.num_envs): m for m in self.results}


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text if len(text) <= 160 else text[:157] + "..."


def _format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == SECONDS:
        return f"{value * 1e6:,.0f} us"
    return f"{value:,.0f}"


# ---------------------------------------------------------------------- running the grid


def _runtime_series(
    recorder: Recorder,
    family: str,
    env: str,
    sizes: Sequence[int],
    workers: int,
    actions: baselines.ActionsFactory,
    duration: float,
) -> None:
    """One cluster for every size of one (env, workers) series; the batch-of-1 latency is
    measured on the 1-worker echo cluster."""
    label = runtime_label(env, workers)
    with contextlib.ExitStack() as stack:
        try:
            address = stack.enter_context(baselines.cluster(env, workers, max(sizes)))
        except Exception as exc:  # the env cannot be hosted here: every size is n/a
            for n in sizes:
                recorder.unavailable(family, label, n, exc)
            return
        for n in sizes:
            run = partial(baselines.runtime, env, n, workers, actions, duration, address=address)
            recorder.measure(family, label, n, run)
        if env == ECHO and workers == 1:
            latency = partial(baselines.runtime_latency_batch1, workers, duration, address=address)
            recorder.measure(LATENCY, BATCH_OF_1, 1, latency, SECONDS)


def _cartpole(recorder: Recorder, grid: Grid) -> None:
    d = grid.duration
    # AsyncVectorEnv forks one process per env: it runs first, before this process holds zmq
    # sockets and child processes that every fork would inherit.
    for n in grid.cartpole:
        if n <= baselines.ASYNC_MAX_ENVS:
            recorder.measure(CARTPOLE, GYM_ASYNC, n, partial(baselines.gym_async, n, d))
    for n in grid.cartpole:
        recorder.measure(CARTPOLE, GYM_SYNC, n, partial(baselines.gym_sync, n, d))
    for n in grid.cartpole:
        recorder.measure(CARTPOLE, ENVPOOL, n, partial(baselines.envpool_cartpole, n, duration=d))
    for n in grid.cartpole:
        in_process = partial(baselines.inprocess_cartpole, n, d)
        recorder.measure(CARTPOLE, IN_PROCESS_CARTPOLE, n, in_process)
    for workers in grid.workers:
        _runtime_series(
            recorder, CARTPOLE, CARTPOLE, grid.cartpole, workers, baselines.cartpole_actions, d
        )
    for workers in grid.workers:
        _runtime_series(
            recorder, CARTPOLE, GYM_CARTPOLE, grid.gym, workers, baselines.cartpole_actions, d
        )


def _echo(recorder: Recorder, grid: Grid) -> None:
    d = grid.duration
    for n in grid.echo:
        recorder.measure(ECHO, IN_PROCESS_ECHO, n, partial(baselines.inprocess_echo, n, d))
        recorder.measure(ECHO, IN_PROCESS_ECHO_RAW, n, partial(baselines.inprocess_echo_raw, n, d))
    for workers in grid.workers:
        _runtime_series(recorder, ECHO, ECHO, grid.echo, workers, baselines.echo_actions, d)
    openenv = partial(baselines.openenv_server_echo, grid.sessions, d)
    recorder.measure(ECHO, OPENENV_WS, grid.sessions, openenv)
    recorder.measure(LATENCY, DIRECT, 1, partial(baselines.direct_dealer_router_p50, d), SECONDS)


# ---------------------------------------------------------------------- reporting


def measurements_table(results: Sequence[Measurement]) -> Table:
    """Every throughput point, with this runtime's 2-worker rate divided by it."""
    by_key = {(m.env, m.system, m.num_envs): m for m in results}
    table = Table(title="env-steps/s (higher is better)")
    for column in ("env", "num_envs", "system", "env-steps/s", "runtime 2w ÷ this"):
        table.add_column(column, justify="left" if column in ("env", "system") else "right")
    for family in FAMILIES:
        # stable: within one env count, systems keep the order they ran in
        rows = sorted((m for m in results if m.env == family), key=lambda m: m.num_envs)
        for m in rows:
            reference = by_key.get((family, runtime_label(family, 2), m.num_envs))
            ratio = (
                f"{reference.value / m.value:,.2f}x"
                if reference is not None and reference.value and m.value and reference is not m
                else ""
            )
            table.add_row(m.env, f"{m.num_envs:,}", m.system, _format_value(m.value, m.unit), ratio)
        table.add_section()
    for m in results:
        if m.env == LATENCY:
            table.add_row(m.env, "1", m.system, _format_value(m.value, m.unit), "")
    return table


def targets_table(judged: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="targets (runtime ÷ baseline)")
    for column in ("target", "ratio", "goal", "status"):
        table.add_column(column, justify="left" if column == "target" else "right")
    colours = {"met": "green", "not met": "red", "n/a": "yellow"}
    for row in judged:
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:,.2f}x"
        goal = f"{'<=' if row['at_most'] else '>='} {row['goal']:g}x"
        status = row["status"]
        table.add_row(row["target"], ratio, goal, f"[{colours[status]}]{status}[/]")
    return table


def errors_table(results: Sequence[Measurement]) -> Table | None:
    failed = [m for m in results if m.value is None]
    if not failed:
        return None
    table = Table(title="n/a: why")
    for column in ("env", "num_envs", "system", "error"):
        table.add_column(column)
    for m in failed:
        table.add_row(m.env, f"{m.num_envs:,}", m.system, m.error)
    return table


def plot(results: Sequence[Measurement], path: Path) -> None:
    """env-steps/s against num_envs, log-log, one subplot per env family, one line per system."""
    figure = Figure(figsize=(6.5 * len(FAMILIES), 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, family in zip(figure.subplots(1, len(FAMILIES)), FAMILIES, strict=True):
        systems = dict.fromkeys(m.system for m in results if m.env == family)
        for system in systems:
            points = sorted(
                (m.num_envs, m.value)
                for m in results
                if m.env == family and m.system == system and m.value
            )
            if points:
                x, y = zip(*points, strict=True)
                style = "-" if system.startswith("runtime") else "--"
                axes.plot(x, y, style, marker="o", label=system)
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_title(family)
        axes.set_xlabel("num_envs (OpenEnv: concurrent sessions)")
        axes.set_ylabel("env-steps/s")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle(f"openenv-zmq vs baselines on {os.cpu_count()} cores")
    figure.savefig(path, dpi=120)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def run_comparison(quick: bool, out: Path) -> int:
    """Measure the whole grid, print the tables, write ``compare.json`` and ``compare.png`` under
    ``out``. Returns 0 (targets not met are results, not failures)."""
    grid = QUICK if quick else FULL
    console = Console()
    if not console.is_terminal:
        # piped to a file or a log: rich would assume 80 columns and wrap every row
        console = Console(width=120)
    console.print(
        f"[bold]openenv-zmq comparison[/bold] ({'quick' if quick else 'full'} grid,"
        f" {grid.duration:g} s per point, {os.cpu_count()} cores)"
    )
    started = time.perf_counter()
    recorder = Recorder(console)
    _cartpole(recorder, grid)
    _echo(recorder, grid)
    results = recorder.results
    by_key = recorder.by_key()
    judged = [target.judge(by_key) for target in TARGETS]

    console.print(measurements_table(results))
    console.print(targets_table(judged))
    errors = errors_table(results)
    if errors is not None:
        console.print(errors)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - started,
        "machine": machine(),
        "grid": asdict(grid),
        "measurements": [asdict(m) for m in results],
        "targets": judged,
    }
    (out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, out / "compare.png")
    console.print(
        f"wrote {out / 'compare.json'} and {out / 'compare.png'}"
        f" in {time.perf_counter() - started:.0f} s"
    )
    return 0
