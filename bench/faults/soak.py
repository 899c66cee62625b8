"""The soak: clients come and go for ``duration`` seconds, and one is killed holding envs each
cycle.

A broker with 2 local echo workers runs as its own process with a short lease
(``--lease`` :data:`LEASE`, ``--heartbeat`` :data:`HEARTBEAT`). :data:`CLIENTS` threads each
repeat a client cycle: connect, make a group of a random size (1..128), reset, step it 1..5
times, close the group and the client. Meanwhile the main thread repeats a kill cycle: start a
client in a process of its own (:mod:`bench.faults.holder`) that makes a group of a random size,
resets it and steps it in a loop, and SIGKILL it 0-0.5 s after it says it holds its envs.
Nothing ever closes a killed client's envs: the broker must, when its lease runs out.

After ``duration`` the threads finish their cycle and the run waits (at most
:data:`SETTLE_TIMEOUT`) for the leases to run out: at the end no env slot is used and no
client session is live (``status`` is asked without opening a session). Errors seen by the
threads' clients, per env or whole call, are counted by type: there should be none.
"""

from __future__ import annotations

import contextlib
import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from echo_env import EchoAction

from bench.faults.cluster import BrokerGone, BrokerProcess, broker_process, python, read_until
from bench.faults.report import Row, check, figure
from openenv_zmq import BatchClient

CLIENTS = 4
LEASE = 2.0
HEARTBEAT = 0.5
MAX_GROUP = 128
MAX_STEPS = 5
HOLDER_START_TIMEOUT = 60.0
KILL_DELAY_MAX = 0.5
SETTLE_TIMEOUT = LEASE * 3 + 10.0
"""Seconds after the last client is gone for the leases to run out and the slots to be freed."""
CLIENT_TIMEOUT = 30.0
HOLDING = re.compile(r"^holding$", re.MULTILINE)
MAX_CYCLES = 1_000_000


@dataclass
class SoakReport:
    seconds: float
    client_cycles: int
    envs_made: int
    steps: int
    clients_killed: int
    envs_held_by_killed: int
    """Envs the killed clients held: nobody closed them but the broker, at their lease's end."""
    errors: dict[str, int]
    """Whole-call exceptions and per-env errors the threads' clients saw, by type."""
    rss_start_mib: float
    rss_end_mib: float
    settle_s: float
    """From the end of the last cycle until no slot is used and no session is live."""
    slots_used_end: int
    sessions_live_end: int
    groups_end: int
    live_workers_end: int
    broker_alive: bool

    def as_dict(self) -> dict[str, Any]:
        return {"measurement": "soak", **asdict(self)}

    def rows(self) -> list[Row]:
        return [
            figure("seconds", self.seconds),
            figure(f"client cycles ({CLIENTS} threads)", self.client_cycles),
            figure("envs made / group steps", f"{self.envs_made:,} / {self.steps:,}"),
            figure(
                "clients killed holding envs (SIGKILL) / envs held",
                f"{self.clients_killed:,} / {self.envs_held_by_killed:,}",
            ),
            check("errors seen by the clients", self.errors, {}),
            figure(
                "broker RSS start -> end (MiB)",
                f"{self.rss_start_mib:.1f} -> {self.rss_end_mib:.1f}",
            ),
            figure(f"end of cycles -> slots freed, lease {LEASE:g} s (s)", self.settle_s),
            check("env slots used at the end", self.slots_used_end, 0),
            check("client sessions live at the end", self.sessions_live_end, 0),
            check("env groups at the end", self.groups_end, 0),
            check("live workers at the end", self.live_workers_end, 2),
            check("broker alive", self.broker_alive, True),
        ]


class _Counts:
    """What the client threads saw, added up under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cycles = self.envs = self.steps = 0
        self.errors: Counter[str] = Counter()


def _client_cycles(
    address: str, seed: int, until: float, stop: threading.Event, counts: _Counts
) -> None:
    rng = random.Random(seed)
    for _ in range(MAX_CYCLES):
        if time.monotonic() >= until or stop.is_set():
            return
        n = rng.randint(1, MAX_GROUP)
        steps = 0
        errors: Counter[str] = Counter()
        try:
            with BatchClient(address, timeout=CLIENT_TIMEOUT) as client:
                envs = client.make("echo", num_envs=n)
                errors.update(type(e).__name__ for e in envs.reset().errors.values())
                for _ in range(rng.randint(1, MAX_STEPS)):
                    result = envs.step([EchoAction(message="soak")] * n)
                    errors.update(type(e).__name__ for e in result.errors.values())
                    steps += 1
                envs.close()
        except Exception as exc:  # counted: the figure is how many
            errors[type(exc).__name__] += 1
            time.sleep(0.1)
        with counts.lock:
            counts.cycles += 1
            counts.envs += n
            counts.steps += steps
            counts.errors += errors


def _kill_a_holder(address: str, rng: random.Random, deadline: float) -> int:
    """Start a holder with a group of random size and SIGKILL it once it holds its envs;
    how many envs it held (0 if it never said)."""
    num_envs = rng.randint(1, MAX_GROUP)
    holder = python(
        "-m",
        "bench.faults.holder",
        address,
        str(num_envs),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        read_until(
            holder, HOLDING, max(1.0, min(HOLDER_START_TIMEOUT, deadline - time.monotonic()))
        )
    except TimeoutError:
        return 0
    else:
        time.sleep(rng.uniform(0.0, KILL_DELAY_MAX))
        return num_envs
    finally:
        with contextlib.suppress(ProcessLookupError):
            holder.send_signal(signal.SIGKILL)
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def measure_soak(duration: float, seed: int = 0) -> SoakReport:
    """Soak a fresh broker for ``duration`` seconds; see the module docstring."""
    extra = ("--lease", str(LEASE), "--heartbeat", str(HEARTBEAT))
    with broker_process(extra=extra) as broker:
        return _soak(broker, duration, random.Random(seed))


def _soak(broker: BrokerProcess, duration: float, rng: random.Random) -> SoakReport:
    counts = _Counts()
    stop = threading.Event()
    rss_start = broker.rss_mib()
    started = time.monotonic()
    until = started + duration
    threads = [
        threading.Thread(
            target=_client_cycles,
            args=(broker.frontend, rng.randrange(2**32), until, stop, counts),
            name=f"soak-client-{i}",
            daemon=True,
        )
        for i in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    killed = held = 0
    try:
        for _ in range(MAX_CYCLES):
            if time.monotonic() >= until or not broker.running():
                break
            envs = _kill_a_holder(broker.frontend, rng, until + HOLDER_START_TIMEOUT)
            if envs:
                killed += 1
                held += envs
    finally:
        stop.set()  # at once on an exception or Ctrl-C; else they are past ``until`` already
        for thread in threads:
            thread.join(CLIENT_TIMEOUT * 2)
    ended = time.monotonic()
    info: dict[str, Any] = {}
    settled = False
    while time.monotonic() - ended < SETTLE_TIMEOUT:
        try:
            info = broker.status()
        except BrokerGone:
            break
        if info["env_slots"]["used"] == 0 and info["sessions"]["live"] == 0:
            settled = True
            break
        time.sleep(0.1)
    settle_s = time.monotonic() - ended
    alive = broker.running()
    return SoakReport(
        seconds=ended - started,
        client_cycles=counts.cycles,
        envs_made=counts.envs,
        steps=counts.steps,
        clients_killed=killed,
        envs_held_by_killed=held,
        errors=dict(counts.errors),
        rss_start_mib=rss_start,
        rss_end_mib=broker.rss_mib(),
        settle_s=settle_s if settled else float("nan"),
        slots_used_end=int(info["env_slots"]["used"]) if info else -1,
        sessions_live_end=int(info["sessions"]["live"]) if info else -1,
        groups_end=int(info["sessions"]["groups"]) if info else -1,
        live_workers_end=len(broker.workers()) if alive else 0,
        broker_alive=alive,
    )
