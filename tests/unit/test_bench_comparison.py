"""``bench.compare``'s judging, tables and figures, from made-up measurements: nothing is run."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from bench.compare import DEFAULT_OUT, parse_args
from bench.comparison import (
    CARTPOLE_P50,
    CPU,
    CPU_TOTAL,
    DIRECT,
    ENVPOOL_SYNC,
    LATENCY,
    RATIO,
    SECONDS,
    TARGETS,
    Key,
    Measurement,
    Recorder,
    Target,
    plot,
    plot_latency,
    runtime_label,
    targets_table,
)

OURS: Key = ("cartpole", "runtime cartpole, 2 workers", 256)
BASE: Key = ("cartpole", "EnvPool (best setting)", 256)
CPU_KEY: Key = (CPU, CPU_TOTAL, 1)


def results(*measurements: Measurement) -> dict[Key, Measurement]:
    return {(m.env, m.system, m.num_envs): m for m in measurements}


def rendered(table: object) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(table)
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


@pytest.mark.parametrize(
    ("ours", "at_most", "status"),
    [
        (300.0, False, "met"),  # 1.2x, at least 1.2x
        (250.0, False, "not met"),
        (250.0, True, "met"),  # 1.0x, at most 1.2x
        (400.0, True, "not met"),
    ],
)
def test_a_ratio_target_divides_by_its_baseline(ours: float, at_most: bool, status: str) -> None:
    target = Target("t", OURS, BASE, 1.2, at_most=at_most)
    row = target.judge(results(Measurement(*OURS, ours), Measurement(*BASE, 250.0)))
    assert row["ratio"] == pytest.approx(ours / 250.0)
    assert (row["unit"], row["status"]) == (RATIO, status)


@pytest.mark.parametrize(("cpu", "status"), [(212e-6, "met"), (250e-6, "met"), (251e-6, "not met")])
def test_an_absolute_target_judges_the_value_itself(cpu: float, status: str) -> None:
    target = Target("cpu", CPU_KEY, None, 250e-6, at_most=True)
    row = target.judge(results(Measurement(*CPU_KEY, cpu, SECONDS)))
    assert (row["ours"], row["baseline"], row["ratio"]) == (cpu, None, None)
    assert (row["unit"], row["status"]) == (SECONDS, status)


def test_an_absolute_target_at_least_must_reach_its_goal() -> None:
    target = Target("rate", OURS, None, 1e6)
    assert target.judge(results(Measurement(*OURS, 2e6)))["status"] == "met"
    assert target.judge(results(Measurement(*OURS, 5e5)))["status"] == "not met"


@pytest.mark.parametrize(
    "measurements",
    [
        (),
        (Measurement(*OURS, None, error="boom"), Measurement(*BASE, 250.0)),
        (Measurement(*OURS, 300.0), Measurement(*BASE, None, error="boom")),
        (Measurement(*OURS, 300.0),),
    ],
)
def test_a_target_missing_either_side_is_na(measurements: tuple[Measurement, ...]) -> None:
    assert Target("t", OURS, BASE, 1.0).judge(results(*measurements))["status"] == "n/a"


def test_an_absolute_target_not_run_is_na() -> None:
    row = Target("cpu", CPU_KEY, None, 250e-6, at_most=True).judge({})
    assert (row["status"], row["unit"]) == ("n/a", None)
    assert "n/a" in rendered(targets_table([row]))


def test_the_targets_table_shows_an_absolute_goal_in_its_unit() -> None:
    judged = [
        Target("cpu per round trip", CPU_KEY, None, 250e-6, at_most=True).judge(
            results(Measurement(*CPU_KEY, 212e-6, SECONDS))
        ),
        Target("beats envpool", OURS, BASE, 0.5).judge(
            results(Measurement(*OURS, 300.0), Measurement(*BASE, 250.0))
        ),
    ]
    lines = rendered(targets_table(judged)).splitlines()
    [cpu_row] = [line for line in lines if "cpu per round trip" in line]
    [ratio_row] = [line for line in lines if "beats envpool" in line]
    assert "212 us" in cpu_row and "<= 250 us" in cpu_row and "met" in cpu_row
    assert "1.20x" in ratio_row and ">= 0.5x" in ratio_row


def test_one_target_per_pair_and_only_the_cpu_target_is_absolute() -> None:
    pairs = [(t.ours, t.baseline) for t in TARGETS]
    assert len(pairs) == len(set(pairs))
    assert [t.ours for t in TARGETS if t.baseline is None] == [CPU_KEY]


def test_one_run_measuring_several_systems_records_each_or_none() -> None:
    recorder = Recorder(Console(file=io.StringIO()))
    systems = [(LATENCY, "p50"), (CPU, "client"), (CPU, "total")]
    recorder.measure_each(systems, 1, lambda: [1e-4, 2e-5, 3e-5], SECONDS)
    assert [(m.system, m.value, m.unit) for m in recorder.results] == [
        ("p50", 1e-4, SECONDS),
        ("client", 2e-5, SECONDS),
        ("total", 3e-5, SECONDS),
    ]

    def fails() -> list[float]:
        raise RuntimeError("no broker")

    recorder = Recorder(Console(file=io.StringIO()))
    recorder.measure_each(systems, 1, fails, SECONDS)
    recorder.measure_each(systems, 1, lambda: [1.0], SECONDS)  # too few values
    assert [m.value for m in recorder.results] == [None] * 6
    assert {m.error.split(":")[0] for m in recorder.results} == {"RuntimeError", "ValueError"}


def fake_results() -> list[Measurement]:
    runtime = runtime_label("cartpole", 1)
    measurements = [
        Measurement("cartpole", runtime_label("cartpole", 2), n, 1e5 * n**0.5) for n in (4, 256)
    ]
    measurements += [Measurement("echo", "in-process", n, 2e5) for n in (64, 1024)]
    for system, base in ((runtime, 300e-6), (ENVPOOL_SYNC, 20e-6)):
        measurements += [
            Measurement(CARTPOLE_P50, system, n, base * n**0.3, SECONDS) for n in (1, 16)
        ]
    measurements.append(Measurement(CARTPOLE_P50, "gym AsyncVectorEnv", 1, None, SECONDS, "boom"))
    measurements.append(Measurement(LATENCY, DIRECT, 1, 90e-6, SECONDS))
    return measurements


@pytest.mark.parametrize("draw", [plot, plot_latency])
def test_the_figures_are_written_as_png(
    tmp_path: Path, draw: Callable[[list[Measurement], Path], None]
) -> None:
    path = tmp_path / "figure.png"
    draw(fake_results(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def test_the_report_goes_outside_the_repository_unless_out_says_where() -> None:
    repository = Path(__file__).resolve().parents[2]
    assert parse_args([]).out == DEFAULT_OUT
    assert not DEFAULT_OUT.resolve().is_relative_to(repository)
    assert parse_args(["--out", "x"]).out == Path("x")
