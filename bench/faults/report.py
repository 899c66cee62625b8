"""The rows a measurement reports, as a rich table or JSON, and the invariants among them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.table import Table


@dataclass(frozen=True)
class Row:
    """One figure of a report: what it is, its value as shown, and, for an invariant, what it
    must be and whether it is."""

    what: str
    value: str
    expected: str = ""
    ok: bool = True


def check(what: str, value: object, expected: object, ok: bool | None = None) -> Row:
    """An invariant row: ``ok`` defaults to ``value == expected``."""
    return Row(what, _shown(value), _shown(expected), value == expected if ok is None else ok)


def figure(what: str, value: object) -> Row:
    """A row that is only measured."""
    return Row(what, _shown(value))


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_shown(v)}" for k, v in sorted(value.items())) or "none"
    return str(value)


def table(title: str, rows: Sequence[Row]) -> Table:
    result = Table(title=title, title_justify="left")
    result.add_column("")
    result.add_column("measured", justify="right")
    result.add_column("expected", justify="right")
    for row in rows:
        style = None if row.ok else "bold red"
        result.add_row(row.what, row.value, row.expected, style=style)
    return result


def failures(rows: Sequence[Row]) -> list[str]:
    return [f"{row.what}: {row.value} (expected {row.expected})" for row in rows if not row.ok]
