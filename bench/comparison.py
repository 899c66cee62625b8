"""The comparison behind ``python -m bench.compare``: every system, in one run, on one machine.

Runs the baselines of :mod:`bench.baselines` and this runtime over a grid of env counts (env-steps
per second) and of CartPole batch sizes (the seconds of one step call), then one echo env's step
p50 and CPU per process (:func:`bench.profile.one_env_cost`); prints the measurements and the
targets (runtime ÷ baseline, or an absolute goal), and writes ``compare.json``, ``compare.png``
and ``latency.png``. A system that cannot run here (a missing package or adapter, an error) is
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
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from bench import baselines, profile
from bench.console import report_console
from broker.bench import cluster_at

ECHO = "echo"
CARTPOLE = "cartpole"
GYM_CARTPOLE = f"gym:{baselines.GYM_ID}"
FAMILIES = (ECHO, CARTPOLE)
"""The throughput families: each is one group of rows in the first table and one subplot of
``compare.png``."""
CARTPOLE_P50 = "cartpole p50"
"""Seconds of one step call of a full CartPole batch against its size: ``latency.png``."""
LATENCY = "latency"
"""One echo env: the runtime's step p50 (ipc; tcp with CURVE off and on) and the direct floor."""
CPU = "cpu"
"""CPU seconds per one-env round trip, per process of the runtime and in all."""

STEPS_PER_S = "env-steps/s"
SECONDS = "s"
RATIO = "x"
"""The unit of a target that divides by a baseline."""

IN_PROCESS_ECHO = "in-process loop (validate, step, dump)"
IN_PROCESS_ECHO_RAW = "in-process loop (raw env.step)"
OPENENV_WS = "OpenEnv /ws (one session per env)"
IN_PROCESS_CARTPOLE = "in-process CartPoleVectorEnv"
GYM_SYNC = "gym SyncVectorEnv"
GYM_ASYNC = "gym AsyncVectorEnv"
ENVPOOL = "EnvPool (best setting)"
ENVPOOL_SYNC = "EnvPool sync step (best thread count)"
BATCH_OF_1 = "runtime batch-of-1 step p50"
BATCH_OF_1_TCP = "runtime batch-of-1 step p50, tcp, CURVE off"
BATCH_OF_1_CURVE = "runtime batch-of-1 step p50, tcp, CURVE on"
DIRECT = "direct DEALER<->ROUTER p50"
CPU_PROCESSES = tuple(f"runtime {p} CPU per round trip" for p in ("client", "broker", "worker"))
CPU_TOTAL = "runtime CPU per round trip (client + broker + worker)"
LATENCY_WORKERS = 1
"""Workers of the runtime in ``latency.png``: one batch on one worker, nothing split."""


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
    latency: tuple[int, ...]
    """Batch sizes of ``latency.png`` (CartPole, step p50)."""
    round_trips: int
    """One-env round trips timed for the batch-of-1 p50 and the CPU per process
    (:func:`bench.profile.one_env_cost`, after its warm-up)."""
    workers: tuple[int, ...] = (1, 2)
    sessions: int = 64


FULL = Grid(
    duration=3.0,
    echo=(64, 256, 1024, 4096),
    cartpole=(4, 16, 256, 1024, 8192),
    gym=(256, 1024),
    latency=(1, 4, 16, 64, 256, 1024),
    round_trips=5000,
)
QUICK = Grid(
    duration=1.0,
    echo=(64, 1024),
    cartpole=(4, 16, 256, 1024, 8192),
    gym=(256,),
    latency=(1, 16, 256),
    round_trips=2000,
)


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
    """``ours`` divided by ``baseline`` must reach ``goal``; with no ``baseline``, ``ours`` itself
    must (an absolute goal, in the unit of ``ours``)."""

    text: str
    ours: Key
    baseline: Key | None
    goal: float
    at_most: bool = False
    """The ratio or value must stay at or below ``goal`` (latency, CPU) rather than reach it."""

    def judge(self, results: dict[Key, Measurement]) -> dict[str, Any]:
        """This target's row of the report: ``ratio`` is ``None`` for an absolute goal; ``unit``
        is :data:`RATIO` for a ratio, else the unit of ``ours`` (``None`` if it was not run)."""
        ours = results.get(self.ours)
        baseline = None if self.baseline is None else results.get(self.baseline)
        measured = None
        if ours is not None and ours.value:
            if self.baseline is None:
                measured = ours.value
            elif baseline is not None and baseline.value:
                measured = ours.value / baseline.value
        status = "n/a"
        if measured is not None:
            met = measured <= self.goal if self.at_most else measured >= self.goal
            status = "met" if met else "not met"
        unit = RATIO if self.baseline is not None else None if ours is None else ours.unit
        return {
            "target": self.text,
            "ours": None if ours is None else ours.value,
            "baseline": None if baseline is None else baseline.value,
            "ratio": None if self.baseline is None else measured,
            "goal": self.goal,
            "at_most": self.at_most,
            "unit": unit,
            "status": status,
        }


def _envpool_target(num_envs: int, goal: float) -> Target:
    return Target(
        f"cartpole {num_envs} envs, 2 workers >= {goal:g}x EnvPool best",
        (CARTPOLE, runtime_label(CARTPOLE, 2), num_envs),
        (CARTPOLE, ENVPOOL, num_envs),
        goal,
    )


TARGETS = (
    Target(
        "echo 1024 envs, 2 workers >= 100x OpenEnv /ws at 64 sessions",
        (ECHO, runtime_label(ECHO, 2), 1024),
        (ECHO, OPENENV_WS, 64),
        100.0,
    ),
    Target(
        "echo 1024 envs, 2 workers >= 0.8x the in-process loop",
        (ECHO, runtime_label(ECHO, 2), 1024),
        (ECHO, IN_PROCESS_ECHO, 1024),
        0.8,
    ),
    _envpool_target(256, 0.5),
    _envpool_target(1024, 1.0),
    _envpool_target(8192, 3.0),
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
        "batch-of-1 p50 <= 3x direct DEALER<->ROUTER p50",
        (LATENCY, BATCH_OF_1, 1),
        (LATENCY, DIRECT, 1),
        3.0,
        at_most=True,
    ),
    Target(
        "CPU per one-env round trip (client + broker + worker) <= 250 us",
        (CPU, CPU_TOTAL, 1),
        None,
        250e-6,
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
        self.measure_each([(env, system)], num_envs, lambda: [run()], unit)

    def measure_each(
        self,
        systems: Sequence[tuple[str, str]],
        num_envs: int,
        run: Callable[[], Sequence[float]],
        unit: str = STEPS_PER_S,
    ) -> None:
        """Several measurements from one run: ``run`` returns one value per (env, system)."""
        start = time.perf_counter()
        try:
            values = run()
            measurements = [
                Measurement(env, system, num_envs, value, unit)
                for (env, system), value in zip(systems, values, strict=True)
            ]
        except Exception as exc:  # any failure is this system's n/a, not the comparison's end
            error = _describe(exc)
            measurements = [
                Measurement(env, system, num_envs, None, unit, error) for env, system in systems
            ]
        seconds = time.perf_counter() - start
        for measurement in measurements:
            self._keep(measurement, seconds)
            seconds = 0.0

    def unavailable(
        self, env: str, system: str, num_envs: int, error: Exception, unit: str = STEPS_PER_S
    ) -> None:
        self._keep(Measurement(env, system, num_envs, None, unit, _describe(error)), 0.0)

    def _keep(self, measurement: Measurement, seconds: float) -> None:
        self.results.append(measurement)
        m = measurement
        shown = _format_value(m.value, m.unit) if m.value is not None else f"n/a ({m.error})"
        self.console.print(
            f"  [dim]{seconds:5.1f} s[/dim]  {m.env:>12} {m.num_envs:>6,}  {m.system}: {shown}",
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
    if unit == RATIO:
        return f"{value:,.2f}x"
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
    latency: bool = False,
) -> None:
    """One cluster for every size of one (env, workers) series; ``latency``: step p50s."""
    label = runtime_label(env, workers)
    unit = SECONDS if latency else STEPS_PER_S
    with contextlib.ExitStack() as stack:
        try:
            address = stack.enter_context(cluster_at(None, env, workers, max(sizes)))
        except Exception as exc:  # the env cannot be hosted here: every size is n/a
            for n in sizes:
                recorder.unavailable(family, label, n, exc, unit)
            return
        for n in sizes:
            run = partial(
                baselines.runtime,
                env,
                n,
                workers,
                actions,
                duration,
                address=address,
                latency=latency,
            )
            recorder.measure(family, label, n, run, unit)


def _forking(recorder: Recorder, grid: Grid) -> None:
    """AsyncVectorEnv, throughput and latency. It forks one process per env, so it runs first,
    before this process holds zmq sockets, threads and child processes that every fork would
    inherit; and to at most :data:`baselines.ASYNC_MAX_ENVS` envs, past which it would measure
    the OS more than Gymnasium."""
    d = grid.duration
    for n in grid.cartpole:
        if n <= baselines.ASYNC_MAX_ENVS:
            recorder.measure(CARTPOLE, GYM_ASYNC, n, partial(baselines.gym_async, n, d))
    for n in grid.latency:
        if n <= baselines.ASYNC_MAX_ENVS:
            run = partial(baselines.gym_async, n, d, latency=True)
            recorder.measure(CARTPOLE_P50, GYM_ASYNC, n, run, SECONDS)


def _cartpole(recorder: Recorder, grid: Grid) -> None:
    d = grid.duration
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


def _cartpole_latency(recorder: Recorder, grid: Grid) -> None:
    """Step p50 against batch size (AsyncVectorEnv's points are in :func:`_forking`)."""
    d = grid.duration
    for n in grid.latency:
        run = partial(baselines.gym_sync, n, d, latency=True)
        recorder.measure(CARTPOLE_P50, GYM_SYNC, n, run, SECONDS)
    for n in grid.latency:
        run = partial(baselines.envpool_cartpole, n, duration=d, latency=True)
        recorder.measure(CARTPOLE_P50, ENVPOOL_SYNC, n, run, SECONDS)
    _runtime_series(
        recorder,
        CARTPOLE_P50,
        CARTPOLE,
        grid.latency,
        LATENCY_WORKERS,
        baselines.cartpole_actions,
        d,
        latency=True,
    )


def _one_env_cost(steps: int) -> list[float]:
    """Step p50, CPU of each process and CPU in all per round trip of one echo env (seconds)."""
    with cluster_at(None, ECHO, 1, 1) as address:
        p50, *cpu = profile.one_env_cost(address, steps)
    return [p50, *cpu, sum(cpu)]


def _one_env(recorder: Recorder, grid: Grid) -> None:
    """One echo env: the step p50 and CPU per process on a 1-worker cluster of its own (the
    only one running, as :func:`bench.profile.warm_group` needs), then over tcp with CURVE off
    and on, then the direct DEALER<->ROUTER floor."""
    systems = [(LATENCY, BATCH_OF_1), *((CPU, name) for name in (*CPU_PROCESSES, CPU_TOTAL))]
    recorder.measure_each(systems, 1, partial(_one_env_cost, grid.round_trips), SECONDS)
    for system, with_curve in ((BATCH_OF_1_TCP, False), (BATCH_OF_1_CURVE, True)):
        run = partial(baselines.runtime_batch1_tcp, grid.duration, with_curve=with_curve)
        recorder.measure(LATENCY, system, 1, run, SECONDS)
    direct = partial(baselines.direct_dealer_router_p50, grid.duration)
    recorder.measure(LATENCY, DIRECT, 1, direct, SECONDS)


def _echo(recorder: Recorder, grid: Grid) -> None:
    d = grid.duration
    for n in grid.echo:
        recorder.measure(ECHO, IN_PROCESS_ECHO, n, partial(baselines.inprocess_echo, n, d))
        recorder.measure(ECHO, IN_PROCESS_ECHO_RAW, n, partial(baselines.inprocess_echo_raw, n, d))
    for workers in grid.workers:
        _runtime_series(recorder, ECHO, ECHO, grid.echo, workers, baselines.echo_actions, d)
    openenv = partial(baselines.openenv_server_echo, grid.sessions, d)
    recorder.measure(ECHO, OPENENV_WS, grid.sessions, openenv)


# ---------------------------------------------------------------------- reporting


def _measurements_table(
    results: Sequence[Measurement],
    title: str,
    value_column: str,
    references: dict[str, str | None],
    ratio_column: str,
) -> Table:
    """One section per family of ``references``; a row's ratio is the family's reference
    system (``None``: none) at the same env count divided by it."""
    by_key = {(m.env, m.system, m.num_envs): m for m in results}
    table = Table(title=title)
    for column in ("env", "num_envs", "system", value_column, ratio_column):
        table.add_column(column, justify="left" if column in ("env", "system") else "right")
    for family, reference_system in references.items():
        # stable: within one env count, systems keep the order they ran in
        rows = sorted((m for m in results if m.env == family), key=lambda m: m.num_envs)
        for m in rows:
            reference = by_key.get((family, reference_system or "", m.num_envs))
            ratio = (
                _format_value(reference.value / m.value, RATIO)
                if reference is not None and reference.value and m.value and reference is not m
                else ""
            )
            table.add_row(m.env, f"{m.num_envs:,}", m.system, _format_value(m.value, m.unit), ratio)
        table.add_section()
    return table


def measurements_table(results: Sequence[Measurement]) -> Table:
    """Every throughput point, with this runtime's 2-worker rate divided by it."""
    return _measurements_table(
        results,
        "env-steps/s (higher is better)",
        STEPS_PER_S,
        {family: runtime_label(family, 2) for family in FAMILIES},
        "runtime 2w ÷ this",
    )


def seconds_table(results: Sequence[Measurement]) -> Table:
    """Every latency and CPU point; a CartPole step p50 with the runtime's divided by it."""
    return _measurements_table(
        results,
        "seconds per step call (p50) and CPU per round trip (lower is better)",
        "p50 or CPU",
        {CARTPOLE_P50: runtime_label(CARTPOLE, LATENCY_WORKERS), LATENCY: None, CPU: None},
        f"runtime {LATENCY_WORKERS}w ÷ this",
    )


def targets_table(judged: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="targets (runtime ÷ baseline, or the runtime's own figure)")
    for column in ("target", "measured", "goal", "status"):
        table.add_column(column, justify="left" if column == "target" else "right")
    colours = {"met": "green", "not met": "red", "n/a": "yellow"}
    for row in judged:
        unit = row["unit"]
        measured = row["ratio"] if unit == RATIO else row["ours"]
        goal = f"{'<=' if row['at_most'] else '>='} {_format_goal(row['goal'], unit)}"
        status = row["status"]
        shown = "n/a" if status == "n/a" else _format_value(measured, unit)
        table.add_row(row["target"], shown, goal, f"[{colours[status]}]{status}[/]")
    return table


def _format_goal(goal: float, unit: str | None) -> str:
    if unit is None:
        return f"{goal:g}"
    return f"{goal:g}x" if unit == RATIO else _format_value(goal, unit)


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


def _plot_family(
    axes: Any, results: Sequence[Measurement], family: str, scale: float = 1.0
) -> None:
    """One line per system of ``family`` (its values times ``scale``) against num_envs."""
    systems = dict.fromkeys(m.system for m in results if m.env == family)
    for system in systems:
        points = sorted(
            (m.num_envs, m.value * scale)
            for m in results
            if m.env == family and m.system == system and m.value
        )
        if points:
            x, y = zip(*points, strict=True)
            style = "-" if system.startswith("runtime") else "--"
            axes.plot(x, y, style, marker="o", label=system)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)


def plot(results: Sequence[Measurement], path: Path) -> None:
    """env-steps/s against num_envs, log-log, one subplot per env family, one line per system."""
    figure = Figure(figsize=(6.5 * len(FAMILIES), 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, family in zip(figure.subplots(1, len(FAMILIES)), FAMILIES, strict=True):
        _plot_family(axes, results, family)
        axes.set_title(family)
        axes.set_xlabel("num_envs (OpenEnv: concurrent sessions)")
        axes.set_ylabel("env-steps/s")
        axes.legend(fontsize="small")
    figure.suptitle(f"openenv-zmq vs baselines on {os.cpu_count()} cores")
    figure.savefig(path, dpi=120)


def plot_latency(results: Sequence[Measurement], path: Path) -> None:
    """The step p50 of a full CartPole batch against its size, log-log, one line per system,
    and the direct DEALER<->ROUTER p50 (one echo env) as a floor."""
    figure = Figure(figsize=(7.0, 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    _plot_family(axes, results, CARTPOLE_P50, scale=1e6)
    direct = next((m.value for m in results if (m.env, m.system) == (LATENCY, DIRECT)), None)
    if direct:
        axes.axhline(direct * 1e6, linestyle=":", color="grey", label=f"{DIRECT} (1 env)")
    axes.set_title(
        f"the cost of one batch: CartPole-v1 (runtime: {LATENCY_WORKERS} worker),"
        f" {os.cpu_count()} cores"
    )
    axes.set_xlabel("num_envs (one step call steps them all)")
    axes.set_ylabel("step p50 (µs)")
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=120)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def run_comparison(quick: bool, out: Path, duration: float | None = None) -> int:
    """Measure the whole grid (``duration``: seconds per point instead of the grid's), print the
    tables, write ``compare.json``, ``compare.png`` and ``latency.png`` under ``out``. Returns 0
    (targets not met are results, not failures)."""
    grid = QUICK if quick else FULL
    if duration is not None:
        grid = replace(grid, duration=duration)
    console = report_console()
    console.print(
        f"[bold]openenv-zmq comparison[/bold] ({'quick' if quick else 'full'} grid,"
        f" {grid.duration:g} s per point, {os.cpu_count()} cores)"
    )
    started = time.perf_counter()
    recorder = Recorder(console)
    _forking(recorder, grid)
    _cartpole(recorder, grid)
    _cartpole_latency(recorder, grid)
    _one_env(recorder, grid)
    _echo(recorder, grid)
    results = recorder.results
    by_key = recorder.by_key()
    judged = [target.judge(by_key) for target in TARGETS]

    console.print(measurements_table(results))
    console.print(seconds_table(results))
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
    written = [out / "compare.json", out / "compare.png", out / "latency.png"]
    written[0].write_text(json.dumps(report, indent=2) + "\n")
    plot(results, written[1])
    plot_latency(results, written[2])
    console.print(f"wrote {', '.join(map(str, written))} in {time.perf_counter() - started:.0f} s")
    return 0
