"""What ``status`` and ``status --watch`` print, from statuses of a real core, on a fake clock."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from rich.console import Console

from broker.core import BrokerConfig, BrokerCore
from broker.epoch import Epoch
from broker.status_view import duration, latency, status_view, watch, where
from openenv_zmq.errors import RequestTimeout
from openenv_zmq.protocol import Message, Op, encode
from tests.unit.test_broker_core import CLIENT, CONTROL, W1, alloc, hello, reply, step


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.4, "0s"), (59.9, "59s"), (61, "1m01s"), (3725, "1h02m"), (2 * 86400 + 7300, "2d02h")],
)
def test_durations_are_short(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


def test_latencies_pick_their_unit() -> None:
    assert [latency(s) for s in (None, 0.000412, 0.00632, 1.5)] == [
        "-",
        "412 µs",
        "6.32 ms",
        "1.50 s",
    ]


def test_where_names_the_instance_once_when_it_is_the_host() -> None:
    row: dict[str, Any] = {"pid": 7, "provider": "local", "host": "devbox", "instance": None}
    assert where(row) == "local @ devbox, pid 7"
    assert where(row | {"provider": "kubernetes", "host": "pod-1", "instance": "pod-1"}) == (
        "kubernetes @ pod-1"
    )
    assert where(row | {"provider": "ray", "instance": "actor-9"}) == "ray @ devbox, actor-9"
    assert where({"pid": 7}) == "? @ ?, pid 7"  # a worker of an earlier version


def terminal() -> tuple[Console, io.StringIO]:
    """An 80-column console that is not a terminal, and what it printed."""
    out = io.StringIO()
    return Console(file=out, width=80, color_system=None, force_terminal=False), out


def render(renderable: Any) -> str:
    console, out = terminal()
    console.print(renderable)
    return out.getvalue()


class Cluster:
    """A core with one worker stepping 4 envs, driven by a fake clock."""

    def __init__(self) -> None:
        self.core = BrokerCore(BrokerConfig(epoch=Epoch(0, 1)))
        meta = {"envs": ["echo"], "capacity": 8, "name": "[red]w1", "pid": 4242}
        meta |= {"provider": "docker", "host": "c0ffee", "instance": "c0ffee99"}
        self.core.on_worker(W1, [CONTROL, *encode(Message(Op.READY, meta=meta))], 0.0)
        self.token = hello(self.core)
        self.group = alloc(self.core, self.token, 4)
        assert self.group.env_ids is not None
        self.env_ids = self.group.env_ids.tolist()
        self.now, self.request_id = 0.0, 100

    def steps(self, count: int, seconds: float) -> None:
        """``count`` batches, each answered after ``seconds``."""
        for _ in range(count):
            self.request_id += 1
            request = step(1, self.env_ids, self.request_id, self.token, self.group.group)
            self.core.on_client(CLIENT, request, self.now)
            self.now += seconds
            self.core.on_worker(W1, reply(CLIENT, self.request_id, self.env_ids), self.now)

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.core.status(self.now)
        return status


def test_status_shows_workers_slots_and_sessions_in_80_columns() -> None:
    cluster = Cluster()
    cluster.now = 125.0
    text = render(status_view(cluster.status(), "broker tcp://127.0.0.1:5555"))
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "1 [red]w1" in text  # a worker's name is text, never markup
    assert "docker @ c0ffee, c0ffee99" in text
    assert "ready" in text and "2m05s" in text
    assert "env slots: 4 used, 4 free" in text


def test_watch_shows_rates_since_the_last_refresh_until_ctrl_c() -> None:
    cluster = Cluster()
    cluster.steps(10, 0.5)  # before the view: slow, and in no refresh's figures
    refreshes = 0

    def sleep(every: float) -> None:
        nonlocal refreshes
        assert every == 1.0
        if refreshes == 2:
            raise KeyboardInterrupt
        refreshes += 1
        cluster.steps(25, 0.004)  # 25 batches of 4 envs, each answered in 4 ms...
        cluster.now += 0.9  # ...in 1 s

    console, out = terminal()
    watch(cluster.status, "tcp://b:5555", 1.0, console, sleep=sleep)  # returns on Ctrl-C
    # Not a terminal: the view is printed once, as it was last.
    text = out.getvalue()
    assert text.count("broker tcp://b:5555, every 1s (Ctrl-C to stop)") == 1
    assert "last 1.0s: env-steps/s 100, requests/s 25" in text
    assert re.search(r"step +25 +4\.00 ms +4\.98 ms", text), text
    assert re.search(r"reset +0 +- +-", text), text
    assert "errors last 1.0s: none" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_watch_keeps_the_last_view_while_the_broker_does_not_answer() -> None:
    cluster = Cluster()
    answers: list[Any] = [cluster.status(), RequestTimeout("no answer in 5 s")]

    def fetch() -> dict[str, Any]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        result: dict[str, Any] = answer
        return result

    def sleep(every: float) -> None:
        if not answers:
            raise KeyboardInterrupt

    console, out = terminal()
    watch(fetch, "tcp://b:5555", 1.0, console, sleep=sleep)
    text = out.getvalue()
    assert "no answer since: RequestTimeout: no answer in 5 s" in text
    assert "docker @ c0ffee" in text


def test_watch_raises_when_the_first_status_fails() -> None:
    def fetch() -> dict[str, Any]:
        raise RequestTimeout("no answer")

    with pytest.raises(RequestTimeout):
        watch(fetch, "tcp://b:5555", 1.0, terminal()[0], sleep=lambda s: None)
