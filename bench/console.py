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


def check_sessions_and_duration(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error (code 2) for ``--sessions`` or ``--duration`` out of range."""
    if not 1 <= args.sessions <= 1024:
        parser.error("--sessions must be between 1 and 1024")
    if not 0 < args.duration <= 600:
        parser.error("--duration must be in (0, 600]")
