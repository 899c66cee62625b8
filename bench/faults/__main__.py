"""The command line of ``python -m bench.faults``; see :mod:`bench.faults`."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from rich.console import Console

from bench.faults import __doc__ as DESCRIPTION
from bench.faults.fuzz import measure_fuzz
from bench.faults.kills import measure_kills
from bench.faults.report import Row, failures, table
from bench.faults.soak import measure_soak

MEASUREMENTS = ("fuzz", "kills", "soak")
DEFAULTS = {"fuzz": 100_000, "kills": 20, "soak": 60.0}
QUICK = {"fuzz": 5_000, "kills": 3, "soak": 10.0}


class Report(Protocol):
    def rows(self) -> list[Row]: ...

    def as_dict(self) -> dict[str, Any]: ...


def _titles(size: dict[str, float]) -> dict[str, str]:
    return {
        "fuzz": f"fuzz: {size['fuzz']:,.0f} garbage messages, a client stepping 64 echo envs",
        "kills": f"kills: {size['kills']:,.0f} x kill -9 of a worker under 256 stepping echo envs",
        "soak": f"soak: {size['soak']:g} s of 4 clients coming and going, one killed a cycle",
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.faults",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="5,000 messages, 3 kills, 10 s")
    parser.add_argument("--json", action="store_true", help="print JSON lines, not tables")
    parser.add_argument("--only", choices=MEASUREMENTS, help="run this measurement alone")
    parser.add_argument("--messages", type=int, help="fuzz messages (overrides --quick)")
    parser.add_argument("--kills", type=int, help="workers killed (overrides --quick)")
    parser.add_argument("--duration", type=float, help="soak seconds (overrides --quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    args = parser.parse_args(argv)
    size: dict[str, float] = dict(QUICK if args.quick else DEFAULTS)
    overrides = {
        "fuzz": ("--messages", args.messages),
        "kills": ("--kills", args.kills),
        "soak": ("--duration", args.duration),
    }
    for name, (flag, value) in overrides.items():
        if value is not None:
            if value <= 0:
                parser.error(f"{flag} must be positive")
            size[name] = value
    runs: dict[str, Callable[[], Report]] = {
        "fuzz": lambda: measure_fuzz(int(size["fuzz"]), args.seed),
        "kills": lambda: measure_kills(int(size["kills"]), args.seed),
        "soak": lambda: measure_soak(size["soak"], args.seed),
    }
    titles = _titles(size)
    console, progress = Console(), Console(stderr=True)
    broken: list[str] = []
    try:
        for name in [args.only] if args.only else MEASUREMENTS:
            progress.print(f"[dim]running {titles[name]}...[/dim]")
            report = runs[name]()
            rows = report.rows()
            broken += [f"{name}: {problem}" for problem in failures(rows)]
            if args.json:
                print(json.dumps(_jsonable({**report.as_dict(), "failures": failures(rows)})))
            else:
                console.print(table(titles[name], rows))
    except KeyboardInterrupt:
        progress.print("interrupted: the broker and its workers are stopped")
        return 130
    for problem in broken:
        progress.print(f"[bold red]not as expected[/bold red] {problem}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
