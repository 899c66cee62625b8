"""The worker-kill run: ``kill -9`` a worker under a stepping client, ``kills`` times.

A broker with 2 local echo workers runs as its own process; a client makes 256 echo envs and
steps them. Each round waits until both workers are live again, then picks at random one of the
broker's own worker processes (a child of the broker process that ``status`` lists as live)
that hosts some of the envs and has lived at least :data:`~broker.providers.slots.
SHORT_LIFE_SECONDS` (a provider restarts a worker that dies younger after a growing
delay, and gives up after 5 such deaths in a row: that is another measurement). It sends it
SIGKILL at a random moment (0-0.2 s) while the client steps all 256 envs again and again: the
envs it hosted come back as per-env ``WorkerLost`` (in flight) or ``SessionLost`` (asked once
the broker knew) in ``result.errors``, and
``reset(env_ids=lost)`` places them on a live worker. The round ends at the first step of all
256 with no error (the recovery time, from the kill) and the provider's replacement worker
joining (the restart time).

Invariants: no step or reset call raises (failures come per env), every round recovers, and
the broker has 2 live workers at the end.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from echo_env import EchoAction

from bench.faults.cluster import BrokerProcess, age_s, broker_process
from bench.faults.report import Row, check, figure
from broker.providers.slots import SHORT_LIFE_SECONDS
from openenv_zmq import BatchClient, EnvGroup
from openenv_zmq.errors import SessionLost, WorkerLost

NUM_ENVS = 256
WORKERS = 2
ROUND_TIMEOUT = 60.0
"""Seconds a round may take to recover and to see its replacement worker join."""
MAX_STEPS_PER_ROUND = 10_000
CLIENT_TIMEOUT = 30.0
STEPS_BETWEEN = 3
"""Steps of all envs before each kill."""
KILL_JITTER = 0.2
"""The kill comes 0 to this many seconds after the client starts stepping again."""


@dataclass
class KillReport:
    kills: int
    rounds_recovered: int
    envs_lost: int
    """Env slots the killed workers hosted, over all rounds."""
    steps: int
    call_failures: dict[str, int]
    """Step and reset calls that raised, by exception type."""
    worker_lost: int
    session_lost: int
    other_env_errors: dict[str, int]
    replaced: int
    """Env ids that ``reset(env_ids=lost)`` placed on a live worker and reset without error."""
    recovery_s: list[float] = field(default_factory=list)
    """Per round: from the kill to the first step of all envs with no error."""
    restart_s: list[float] = field(default_factory=list)
    """Per round: from the kill to the replacement worker live in ``status``."""
    live_workers_end: int = 0
    broker_alive: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"measurement": "kills", **asdict(self)}

    def rows(self) -> list[Row]:
        def spread(values: list[float]) -> str:
            if not values:
                return "-"
            return f"{statistics.median(values):.2f} / {max(values):.2f}"

        return [
            figure("workers killed (kill -9)", self.kills),
            figure("env slots on the killed workers", self.envs_lost),
            figure("steps of all 256 envs", self.steps),
            check("step / reset calls that raised", self.call_failures, {}),
            figure("per-env WorkerLost", self.worker_lost),
            figure("per-env SessionLost", self.session_lost),
            check("other per-env errors", self.other_env_errors, {}),
            figure("envs re-placed by reset(env_ids=lost)", self.replaced),
            check("rounds recovered", self.rounds_recovered, self.kills),
            figure("kill -> all 256 step clean, median / max (s)", spread(self.recovery_s)),
            figure("kill -> replacement worker live, median / max (s)", spread(self.restart_s)),
            check("live workers at the end", self.live_workers_end, WORKERS),
            check("broker alive", self.broker_alive, True),
        ]


def measure_kills(kills: int, seed: int = 0) -> KillReport:
    """Kill a worker ``kills`` times under a client stepping 256 envs; see the module docstring."""
    with broker_process(workers=WORKERS) as broker:
        return _kills(broker, kills, random.Random(seed))


def _victim(broker: BrokerProcess, rng: random.Random, deadline: float) -> dict[str, Any]:
    """A live worker of the broker's own hosting envs, old enough not to count as a quick death;
    waits for one (and for both workers to be live)."""
    while True:
        workers = broker.workers()
        if len(workers) == WORKERS:
            hosting = [w for w in workers if w["used"] > 0]
            ready = [w for w in hosting if age_s(w["pid"]) >= SHORT_LIFE_SECONDS]
            if ready:
                return rng.choice(ready)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no worker to kill: {workers}")
        time.sleep(0.1)


def _kill(pid: int, killed: list[float]) -> None:
    """``kill -9 pid``; then the time of it goes into ``killed``."""
    os.kill(pid, signal.SIGKILL)
    killed.append(time.monotonic())


@dataclass
class _Stepping:
    """The client's 256 envs, stepped and re-placed, and what it saw, into ``report``."""

    envs: EnvGroup
    report: KillReport
    failures: Counter[str] = field(default_factory=Counter)
    others: Counter[str] = field(default_factory=Counter)

    def step(self) -> tuple[bool, list[int]]:
        """One step of all envs: whether every env answered without error, and the env ids
        lost with their worker."""
        try:
            result = self.envs.step([EchoAction(message="again")] * NUM_ENVS)
        except Exception as exc:  # counted: the figure is how many
            self.failures[type(exc).__name__] += 1
            time.sleep(0.1)
            return False, []
        self.report.steps += 1
        lost = []
        for env_id, error in result.errors.items():
            if isinstance(error, WorkerLost):
                self.report.worker_lost += 1
            elif isinstance(error, SessionLost):
                self.report.session_lost += 1
            else:
                self.others[type(error).__name__] += 1
                continue
            lost.append(env_id)
        return not result.errors, lost

    def replace(self, lost: list[int]) -> None:
        """``reset(env_ids=lost)``: places them on a live worker and resets them."""
        try:
            again = self.envs.reset(env_ids=lost)
        except Exception as exc:  # counted: the figure is how many
            self.failures[type(exc).__name__] += 1
            return
        self.report.replaced += len(lost) - len(again.errors)
        self.others.update(type(e).__name__ for e in again.errors.values())

    def recover(
        self, broker: BrokerProcess, victim: int, killed: list[float]
    ) -> tuple[float | None, float | None]:
        """Step until ``victim`` has been killed (its time appears in ``killed``), every env
        steps without error again and the victim's replacement is live. Returns the seconds
        from the kill to the first clean step and to the replacement (``None``: not within
        :data:`ROUND_TIMEOUT`)."""
        recovered = restarted = None
        started = time.monotonic()
        for _ in range(MAX_STEPS_PER_ROUND):
            if time.monotonic() - (killed[0] if killed else started) > ROUND_TIMEOUT:
                break
            if recovered is None:
                began = time.monotonic()
                clean, lost = self.step()
                if clean and killed and began > killed[0]:
                    recovered = time.monotonic() - killed[0]
                elif lost:
                    self.replace(lost)
            if restarted is None and killed:
                pids = {w["pid"] for w in broker.workers()}
                if len(pids) == WORKERS and victim not in pids:
                    restarted = time.monotonic() - killed[0]
            if recovered is not None and restarted is not None:
                break
            if recovered is not None:
                time.sleep(0.05)
        return recovered, restarted


def _kills(broker: BrokerProcess, kills: int, rng: random.Random) -> KillReport:
    report = KillReport(kills, 0, 0, 0, {}, 0, 0, {}, 0)
    with BatchClient(broker.frontend, timeout=CLIENT_TIMEOUT) as client:
        envs = client.make("echo", num_envs=NUM_ENVS)
        envs.reset()
        stepping = _Stepping(envs, report)
        for _ in range(kills):
            for _ in range(STEPS_BETWEEN):
                stepping.step()
            victim = _victim(broker, rng, time.monotonic() + ROUND_TIMEOUT + SHORT_LIFE_SECONDS)
            report.envs_lost += victim["used"]
            killed: list[float] = []
            # The kill lands while the client steps: mid-step (WorkerLost) or between steps.
            timer = threading.Timer(rng.uniform(0.0, KILL_JITTER), _kill, (victim["pid"], killed))
            timer.start()
            try:
                recovered, restarted = stepping.recover(broker, victim["pid"], killed)
            finally:
                timer.cancel()
                timer.join()
            if recovered is not None and restarted is not None:
                report.rounds_recovered += 1
                report.recovery_s.append(recovered)
                report.restart_s.append(restarted)
    report.call_failures = dict(stepping.failures)
    report.other_env_errors = dict(stepping.others)
    report.broker_alive = broker.running()
    report.live_workers_end = len(broker.workers()) if report.broker_alive else 0
    return report
