"""``python -m bench.profile``: where one batch's time goes, per process.

Steps ``--num-envs`` envs (default 1 echo env) through an embedded broker with one worker,
``--steps`` times after a warm-up, and reports the step's wall-clock p50 and the CPU each
process spent per round trip: the client (this process, its heartbeat thread included), the
broker and the worker (from ``/proc``). Then, as asked:

- ``--cprofile``: the client's own functions by time (``cProfile``, the top 25);
- ``--py-spy DIR``: flame graphs of the broker and the worker while they serve the same loop
  (``py-spy record``, needs ptrace rights: root, or ``kernel.yama.ptrace_scope`` 0), written to
  ``DIR/broker.svg`` and ``DIR/worker.svg``;
- ``--floor``: the same path with our code removed, for one echo env: the client's 1-env step
  frames over a DEALER to a bare pyzmq relay (ROUTER to ROUTER, the broker's socket recipe) and
  a bare DEALER that sends every message back, each in its own process. Four socket hops, as
  through the broker; what the runtime costs past them is ours. ``--relay-work US`` makes the
  relay busy-wait that long per message, standing in for a broker's own work: on few cores,
  the sockets' cost grows with it (each message then wakes a sleeping I/O thread).

CPU figures include the profilers' own cost when they run: read them from a run without.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import multiprocessing
import pstats
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from rich.console import Console
from rich.table import Table

from bench.baselines import cartpole_actions, echo_actions, one_env_step_frames
from bench.faults.cluster import descendants
from broker.bench import embedded_broker_pid, embedded_cluster
from broker.procfs import cpu_seconds
from openenv_zmq import BatchClient, sockets

WARMUP_STEPS = 300
ACTIONS: dict[str, Callable[[int], Any]] = {"echo": echo_actions, "cartpole": cartpole_actions}


def _busy(seconds: float) -> None:
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        pass


def _relay(ports: multiprocessing.Queue[int], stop: Event, work_s: float) -> None:
    """The broker with our code removed: forward client messages to the one worker and its
    answers back, nothing read but the routing frames (after ``work_s`` of busy-waiting)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    front = sockets.router(context, "tcp://127.0.0.1:*")
    back = sockets.router(context, "tcp://127.0.0.1:*")
    for socket in (front, back):
        ports.put(int(sockets.endpoint(socket).rsplit(":", 1)[1]))
    worker, _ = back.recv_multipart()  # its hello
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    while not stop.is_set():
        ready = dict(poller.poll(100))
        if front in ready:
            request = front.recv_multipart()
            _busy(work_s)
            back.send_multipart([worker, *request])
        if back in ready:
            answer = back.recv_multipart()
            _busy(work_s)
            front.send_multipart(answer[1:])
    context.destroy(linger=0)


def _echo(port: int, stop: Event) -> None:
    """The worker with our code removed: every message goes back as it came."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    dealer = sockets.configure(context.socket(zmq.DEALER))
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send_multipart([b"hello"])
    while not stop.is_set():
        if dealer.poll(100, zmq.POLLIN):
            dealer.send_multipart(dealer.recv_multipart())
    context.destroy(linger=0)


def time_steps(step: Callable[[], object], steps: int, pids: Sequence[int]) -> list[float]:
    """Call ``step`` ``steps`` times; return its wall-clock p50, then the CPU per call of this
    process (every thread) and of each process in ``pids`` (from ``/proc``), all in seconds."""
    latencies = np.empty(steps)
    before = (time.process_time(), *map(cpu_seconds, pids))
    for i in range(steps):
        start = time.perf_counter()
        step()
        latencies[i] = time.perf_counter() - start
    after = (time.process_time(), *map(cpu_seconds, pids))
    per_step = [(b - a) / steps for a, b in zip(before, after, strict=True)]
    return [float(np.median(latencies)), *per_step]


def floor(steps: int, work_s: float = 0.0) -> list[float]:
    """Wall-clock p50 and CPU per round trip of client, relay and echo (s): :func:`time_steps`."""
    spawn = multiprocessing.get_context("spawn")
    ports: multiprocessing.Queue[int] = spawn.Queue()
    stop = spawn.Event()
    relay = spawn.Process(target=_relay, args=(ports, stop, work_s), daemon=True)
    relay.start()
    front, back = ports.get(timeout=30), ports.get(timeout=30)
    echo = spawn.Process(target=_echo, args=(back, stop), daemon=True)
    echo.start()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    dealer = sockets.configure(context.socket(zmq.DEALER))
    dealer.connect(f"tcp://127.0.0.1:{front}")
    frames = one_env_step_frames()

    def round_trip() -> None:
        dealer.send_multipart(frames)
        dealer.recv_multipart()

    try:
        for _ in range(WARMUP_STEPS):
            round_trip()
        assert relay.pid is not None and echo.pid is not None
        return time_steps(round_trip, steps, (relay.pid, echo.pid))
    finally:
        stop.set()
        context.destroy(linger=0)
        for process in (relay, echo):
            process.join(5)
            if process.is_alive():
                process.kill()


@contextlib.contextmanager
def warm_group(
    address: str, env: str, num_envs: int
) -> Iterator[tuple[Callable[[], None], tuple[int, int]]]:
    """A group of ``num_envs`` ``env`` envs on the :func:`~broker.bench.embedded_cluster` at
    ``address``, which must be the only one this process runs and have one worker. Steps it
    :data:`WARMUP_STEPS` times, then yields its step (the same actions every time; raises the
    envs' errors) and the pids of the broker and the worker; closes the group and client after.
    """
    actions = ACTIONS[env](num_envs)
    with BatchClient(address, timeout=60) as client:
        client.wait_for_workers(1, env, 60)
        broker = embedded_broker_pid()
        [worker] = sorted(descendants(broker))
        with client.make(env, num_envs) as group:
            group.reset(seed=0)

            def step() -> None:
                group.step(actions).raise_for_errors()

            for _ in range(WARMUP_STEPS):
                step()
            yield step, (broker, worker)


def one_env_cost(address: str, steps: int) -> list[float]:
    """:func:`time_steps` of one echo env on the 1-worker embedded cluster at ``address``: the
    step's p50, then the CPU per round trip of the client, the broker and the worker (s)."""
    with warm_group(address, "echo", 1) as (step, pids):
        return time_steps(step, steps, pids)


def run(
    env: str,
    num_envs: int,
    steps: int,
    use_cprofile: bool,
    py_spy: Path | None,
    with_floor: bool = False,
    relay_work_s: float = 0.0,
) -> int:
    with (
        embedded_cluster(1, [env], max(num_envs, 1)) as address,
        warm_group(address, env, num_envs) as (step, pids),
    ):
        broker, worker = pids
        spies = _start_py_spy(py_spy, {"broker": broker, "worker": worker}, steps)
        profiler = cProfile.Profile() if use_cprofile else None
        if profiler is not None:
            profiler.enable()
        rows = {"runtime": time_steps(step, steps, pids)}
        if profiler is not None:
            profiler.disable()
        for spy in spies:
            spy.wait(60)
    table = Table(title=f"{steps:,} steps of {num_envs:,} {env} env(s), 1 worker")
    for column in ("path", "step p50", "client CPU", "broker CPU", "worker CPU", "total CPU"):
        table.add_column(column, justify="right")
    if with_floor:
        rows["floor"] = floor(steps, relay_work_s)
    for name, (p50, *cpu) in rows.items():
        table.add_row(name, *(f"{seconds * 1e6:,.0f} µs" for seconds in (p50, *cpu, sum(cpu))))
    Console().print(table)
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    if py_spy is not None:
        print(f"flame graphs: {py_spy / 'broker.svg'}, {py_spy / 'worker.svg'}")
    return 0


def _start_py_spy(
    folder: Path | None, pids: dict[str, int], steps: int
) -> list[subprocess.Popen[bytes]]:
    if folder is None:
        return []
    if shutil.which("py-spy") is None:
        raise SystemExit("--py-spy needs py-spy: pip install py-spy")
    folder.mkdir(parents=True, exist_ok=True)
    # Long enough for the loop at ~1 ms a step; py-spy stops on its own.
    seconds = max(2, int(steps / 1000) + 2)
    record = ["py-spy", "record", "--duration", str(seconds), "--rate", "500", "--nonblocking"]
    return [
        subprocess.Popen(
            [*record, "--pid", str(pid), "--output", str(folder / f"{name}.svg")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--env", choices=sorted(ACTIONS), default="echo")
    parser.add_argument("--num-envs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--cprofile", action="store_true", help="profile the client's functions")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="DIR")
    parser.add_argument(
        "--floor", action="store_true", help="also the same path with our code removed"
    )
    parser.add_argument(
        "--relay-work",
        type=float,
        default=0.0,
        metavar="US",
        help="with --floor: µs the relay busy-waits per message",
    )
    args = parser.parse_args(argv)
    if args.num_envs < 1 or args.steps < 1:
        parser.error("--num-envs and --steps must be at least 1")
    if args.floor and (args.env, args.num_envs) != ("echo", 1):
        parser.error("--floor is measured for one echo env")
    if args.relay_work < 0:
        parser.error("--relay-work must be 0 or more")
    return run(
        args.env,
        args.num_envs,
        args.steps,
        args.cprofile,
        args.py_spy,
        args.floor,
        args.relay_work / 1e6,
    )


if __name__ == "__main__":
    sys.exit(main())
