"""What ``openenv-broker status`` prints: a broker's status as rich renderables, and the live
view of ``status --watch``.

Everything a worker reported (its name, host, instance, env names) is shown as plain
:class:`~rich.text.Text`, never parsed as rich markup: a worker may name itself anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from broker.metrics import Interval, compare
from openenv_zmq.errors import OpenEnvZmqError
from openenv_zmq.sandbox.layers import summary as layers_summary

Status = Mapping[str, Any]


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h03m``, ``4d02h``: short enough for a narrow column."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def latency(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def rate(per_second: float | None) -> str:
    return "-" if per_second is None else f"{per_second:,.0f}"


def where(worker: Mapping[str, Any]) -> str:
    """``provider @ host, instance``: who started the worker, its host, and its container,
    actor or pod id (named once when it is the host name, as a pod's is), else its process id."""
    provider, host, instance = worker.get("provider"), worker.get("host"), worker.get("instance")
    text = f"{provider or '?'} @ {host or '?'}"
    if not instance:
        return f"{text}, pid {worker['pid']}"
    return text if instance == host else f"{text}, {instance}"


def workers_table(status: Status, title: str | None = None) -> Table:
    """A row per worker, two lines high so that it fits 80 columns: its id and name, and under
    them where it runs (:func:`where`); then its state, envs, env slots used and free, env steps
    served, age (since it registered) and when it was last heard from."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.collapse_padding = True
    table.add_column("worker", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("envs", overflow="fold")
    for column in ("used", "free", "steps", "age", "seen"):
        table.add_column(column, justify="right", no_wrap=True)
    for w in status["workers"]:
        name = Text(f"{w['id']} ")
        name.append(Text(str(w["name"]), style="bold"))
        # Padded, not indented with spaces: a line too long wraps under itself.
        below = Padding(Text(where(w), style="dim"), (0, 0, 0, 2))
        table.add_row(
            Group(name, below),
            w["state"].lower(),
            Text(", ".join(w["envs"])),
            f"{w['used']:,}",
            f"{w['free']:,}",
            f"{w['steps_served']:,}",
            duration(w["age_s"]) if "age_s" in w else "-",
            f"{w['last_seen_ago']:.1f}s",
        )
    return table


def summary(status: Status) -> list[Text]:
    """The lines under the workers table: sandboxes, slots and requests, sessions."""
    lines = [
        Text(f"worker {w['id']} sandbox: {layers_summary(w['sandbox'])}")
        for w in status["workers"]
        if w.get("sandbox")
    ]
    slots, sessions = status["env_slots"], status["sessions"]
    lines.append(
        Text(
            f"env slots: {slots['used']} used, {slots['free']} free; "
            f"{status['in_flight']} request(s) in flight from {status['clients']} client(s)"
        )
    )
    lines.append(
        Text(
            f"client sessions: {sessions['live']} live, holding {sessions['groups']} env"
            f" group(s) of {sessions['envs']} env(s)"
        )
    )
    return lines


def status_view(status: Status, title: str) -> Group:
    """What plain ``status`` prints."""
    return Group(workers_table(status, title), *summary(status))


def activity(interval: Interval) -> Group:
    """Requests, env steps, latency and errors over ``interval``: rates when its length is
    known, else totals since the broker started."""
    since = "since start" if interval.seconds is None else f"last {interval.seconds:.1f}s"
    steps = (
        f"env-steps/s {rate(interval.env_steps_per_s)}, requests/s {rate(interval.requests_per_s)}"
        if interval.seconds
        else f"env steps {interval.env_steps:,}, requests {sum(interval.requests.values()):,}"
    )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("op")
    for column in ("requests" if interval.seconds is None else "req/s", "p50", "p99"):
        table.add_column(column, justify="right", no_wrap=True)
    for op, count in interval.requests.items():
        p50, p99 = interval.latency.get(op, (None, None))
        shown = f"{count:,}" if interval.seconds is None else rate(interval.per_second(count))
        table.add_row(op, shown, latency(p50), latency(p99))
    errors = ", ".join(f"{name} {n:,}" for name, n in sorted(interval.errors.items()))
    return Group(
        Text(f"{since}: {steps}"),
        table,
        Text(f"errors {since}: {errors or 'none'}"),
    )


def watch_view(
    connect: str, status: Status, interval: Interval, problem: str | None, every: float
) -> Group:
    """One frame of ``status --watch``."""
    title = f"broker {connect}, every {every:g}s (Ctrl-C to stop)"
    parts: list[RenderableType] = [workers_table(status, title), *summary(status)]
    parts += [Text(""), activity(interval)]
    if problem is not None:
        parts.append(Text(f"no answer since: {problem}", style="red"))
    return Group(*parts)


def watch(
    fetch: Callable[[], Status],
    connect: str,
    every: float,
    console: Console,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Show a live view of ``fetch()`` (a broker's status) every ``every`` seconds until
    Ctrl-C (:class:`KeyboardInterrupt` ends it and returns). The first ``fetch`` raises what it
    raises; later failures are shown in the view, and the last status stays until the broker
    answers again."""
    status = fetch()
    previous: Mapping[str, Any] | None = None
    problem: str | None = None

    def frame() -> Group:
        return watch_view(connect, status, compare(previous, status["metrics"]), problem, every)

    try:
        with Live(frame(), console=console, auto_refresh=False) as live:
            while True:
                sleep(every)
                try:
                    fresh = fetch()
                except OpenEnvZmqError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                else:
                    previous, status, problem = status["metrics"], fresh, None
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        return
