"""What the benchmarks share to print their tables and read their common options."""

from __future__ import annotations

import argparse

from rich.console import Console


def report_console() -> Console:
    """A console for a results table: a terminal's own width, 120 columns when piped."""
    console = Console()
    if not console.is_terminal:
        # piped to a file or a log: rich would assume 80 columns and wrap every row
        console = Console(width=120)
    return console


MAX_SESSIONS = 1024
MAX_DURATION_S = 600.0


def add_sessions_and_duration(
    parser: argparse.ArgumentParser, *, sessions: int, duration: float, sessions_help: str
) -> None:
    """Add ``--sessions`` (1 to 1,024) and ``--duration`` (seconds, more than 0 and at most 600)
    with these defaults; a value out of range is a usage error (code 2)."""
    parser.add_argument(
        "--sessions",
        type=_sessions,
        default=sessions,
        help=f"{sessions_help} (default {sessions})",
    )
    parser.add_argument(
        "--duration",
        type=_duration,
        default=duration,
        help=f"seconds per measurement (default {duration:g})",
    )


def _sessions(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_SESSIONS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_SESSIONS}, got {value}")
    return value


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"must be in (0, {MAX_DURATION_S:g}], got {value:g}")
    return value
