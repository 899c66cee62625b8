"""The benchmarks' shared ``--sessions`` and ``--duration`` options."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import pytest

from bench import gateway, pool


@pytest.mark.parametrize("parse_args", [pool.parse_args, gateway.parse_args])
def test_the_bounds_are_taken(
    parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
) -> None:
    args = parse_args(["--sessions", "1024", "--duration", "600"])
    assert (args.sessions, args.duration) == (1024, 600.0)
    assert parse_args(["--sessions", "1"]).sessions == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sessions", "0"], "argument --sessions: must be between 1 and 1024, got 0"),
        (["--sessions", "1025"], "argument --sessions: must be between 1 and 1024, got 1025"),
        (["--sessions", "3.5"], "argument --sessions: not a whole number: '3.5'"),
        (["--duration", "0"], "argument --duration: must be in (0, 600], got 0"),
        (["--duration", "601"], "argument --duration: must be in (0, 600], got 601"),
        (["--duration", "soon"], "argument --duration: not a number of seconds: 'soon'"),
    ],
)
def test_out_of_range_is_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        pool.parse_args(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"python -m bench.pool: error: {message}"
