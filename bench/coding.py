"""``python -m bench.coding``: contained coding sessions, against OpenEnv's way of serving them.

- ``sessions``: N (default 1,000) coding sessions on one worker, each reset and stepped once;
  the memory each session process adds (USS, read from ``/proc``). Goal: <= 5 MiB.
- ``reset``: one session's reset through the broker, one at a time. Goal: p50 <= 20 ms.
- ``throughput``: 256 sessions on 2 workers stepping a short snippet, against OpenEnv's own
  server with its ``PyExecutor``, one session per server and one server per core, stepped over
  ``/ws`` with the same snippet, side by side. Goal: >= 10x.
- ``deadline``: 256 sessions, one in an infinite loop: the batch answers at the deadline with
  every other row normal.
- The floor under ``throughput``, our runtime removed: the same 256 sessions as bare forked
  processes, each running the session's ``PyExecutor`` behind a socketpair, driven by one
  process with a selector (no broker, worker, hardening or models); and the executor alone, in
  one process, times the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import selectors
import socket
import statistics
import time
from pathlib import Path
from typing import Any

from coding_env import CodeAction
from rich.console import Console
from rich.table import Table

from broker import procfs
from broker.bench import embedded_cluster
from openenv_zmq import BatchClient
from openenv_zmq.sandbox.frames import RECV_BYTES, FrameReader, encode_frame

SNIPPET = "x = 6 * 7\nprint(x)"
ZYGOTE_MARK = b"openenv_zmq.sandbox.zygote"
_MIB = 2**20


def _uss(pid: int) -> int:
    """Bytes only this process holds (private pages, clean or dirty)."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _process_table() -> tuple[dict[int, int], set[int]]:
    """Every process's parent, and the zygotes among them."""
    parents: dict[int, int] = {}
    marked = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            if ZYGOTE_MARK in (entry / "cmdline").read_bytes():
                marked.add(int(entry.name))
    # Sessions are forked from the zygote, so they carry its command line too.
    return parents, {pid for pid in marked if parents[pid] not in marked}


def _zygotes_and_sessions() -> dict[int, list[int]]:
    """Each running zygote's pid and its session processes' pids."""
    parents, zygotes = _process_table()
    sessions: dict[int, list[int]] = {zygote: [] for zygote in zygotes}
    for pid, parent in parents.items():
        if parent in zygotes:
            sessions[parent].append(pid)
    return sessions


def _cpu_by_role() -> dict[str, float]:
    """CPU seconds so far of this process's descendants, by role: the broker (and what else
    it started), the workers, their zygotes and the sessions."""
    parents, zygotes = _process_table()
    workers = {parents[zygote] for zygote in zygotes}
    spent = dict.fromkeys(("broker", "workers", "zygotes", "sessions"), 0.0)
    for pid in parents:
        ancestor = pid
        while ancestor in parents and ancestor != os.getpid():
            ancestor = parents[ancestor]
        if ancestor != os.getpid() or pid == os.getpid():
            continue
        if pid in zygotes:
            role = "zygotes"
        elif parents[pid] in zygotes:
            role = "sessions"
        else:
            role = "workers" if pid in workers else "broker"
        with contextlib.suppress(OSError):
            spent[role] += procfs.cpu_seconds(pid)
    return spent


def sessions(count: int) -> dict[str, Any]:
    with embedded_cluster(1, ["coding"], count) as address, BatchClient(address) as client:
        client.wait_for_workers(1, timeout=120)
        envs = client.make("coding", count)
        started = time.perf_counter()
        envs.reset().raise_for_errors()
        reset_s = time.perf_counter() - started
        started = time.perf_counter()
        envs.step([CodeAction(code=SNIPPET)] * count).raise_for_errors()
        step_s = time.perf_counter() - started
        ((zygote, pids),) = _zygotes_and_sessions().items()
        uss = [_uss(pid) for pid in pids]
        zygote_rss = _rss(zygote)
        envs.close()
    return {
        "sessions": len(pids),
        "uss_p50_mib": statistics.median(uss) / _MIB,
        "uss_mean_mib": statistics.fmean(uss) / _MIB,
        "zygote_rss_mib": zygote_rss / _MIB,
        "reset_all_s": reset_s,
        "step_all_s": step_s,
    }


def reset_latency(resets: int) -> dict[str, Any]:
    with embedded_cluster(1, ["coding"], 16) as address, BatchClient(address) as client:
        client.wait_for_workers(1, timeout=120)
        envs = client.make("coding", 1)
        envs.reset().raise_for_errors()
        latencies = []
        for _ in range(resets):
            started = time.perf_counter()
            envs.reset().raise_for_errors()
            latencies.append(time.perf_counter() - started)
        envs.close()
    latencies.sort()
    return {
        "reset_p50_ms": latencies[len(latencies) // 2] * 1e3,
        "reset_p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
    }


def runtime_steps_per_s(
    num_envs: int, workers: int, seconds: float
) -> tuple[float, dict[str, float]]:
    """Steps per second, and the CPU each role spent per step (µs), this client included."""
    with embedded_cluster(workers, ["coding"], num_envs) as address, BatchClient(address) as client:
        client.wait_for_workers(workers, timeout=120)
        envs = client.make("coding", num_envs)
        envs.reset().raise_for_errors()
        actions = [CodeAction(code=SNIPPET)] * num_envs
        envs.step(actions).raise_for_errors()
        cpu_before, client_before = _cpu_by_role(), time.process_time()
        steps, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            envs.step(actions).raise_for_errors()
            steps += num_envs
        rate = steps / (time.perf_counter() - started)
        cpu = {"client": time.process_time() - client_before}
        cpu.update({k: v - cpu_before[k] for k, v in _cpu_by_role().items()})
        envs.close()
    return rate, {role: spent / steps * 1e6 for role, spent in cpu.items()}


def openenv_steps_per_s(servers: int, seconds: float) -> float:
    # Imported here, not at the top: every process spawned from this one (the broker, its
    # workers, the floor's driver) imports this module again, and openenv's server brings
    # gradio, about 10 s of imports each.
    from bench.openenv_coding import openenv_coding_server
    from bench.openenv_server import step_sessions

    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(openenv_coding_server()) for _ in range(servers)]

        async def all_servers() -> float:
            rates = await asyncio.gather(
                *(step_sessions(url, 1, 1.0, seconds, {"code": SNIPPET}) for url in urls)
            )
            return sum(rates)

        return asyncio.run(all_servers())


def executor_steps_per_s(seconds: float) -> float:
    """One ``PyExecutor`` stepping the snippet in this process, as fast as it goes."""
    from coding_env.server.executor import PyExecutor  # smolagents: see openenv_steps_per_s

    executor = PyExecutor()
    request = {"code": SNIPPET}
    for _ in range(100):
        executor.handle(request)
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(100):
            executor.handle(request)
        steps += 100
    return steps / (time.perf_counter() - started)


def bare_sessions_steps_per_s(num_envs: int, seconds: float) -> float:
    """The floor: ``num_envs`` forked processes each serving a ``PyExecutor`` over a socketpair,
    stepped in full batches by a selector loop. Run in a fresh process (spawned, so no thread
    of this one is forked)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        rate: float = pool.apply(_bare_sessions, (num_envs, seconds))
    return rate


def _bare_sessions(num_envs: int, seconds: float) -> float:
    from coding_env.server.executor import PyExecutor  # before the forks, as the zygote does

    channels: list[socket.socket] = []
    for _ in range(num_envs):
        ours, theirs = socket.socketpair()
        if os.fork() == 0:
            for channel in [ours, *channels]:  # or the driver's close would not end them
                channel.close()
            _serve_bare(theirs, PyExecutor())
        theirs.close()
        channels.append(ours)
    selector = selectors.DefaultSelector()
    readers = {channel.fileno(): (channel, FrameReader()) for channel in channels}
    for channel in channels:
        selector.register(channel, selectors.EVENT_READ)
    request = encode_frame({"code": SNIPPET})

    def batch() -> None:
        for channel in channels:
            channel.sendall(request)
        waiting = len(channels)
        while waiting:
            for key, _ in selector.select():
                channel, reader = readers[key.fd]
                reader.feed(channel.recv(RECV_BYTES))
                if reader.next_frame() is not None:
                    waiting -= 1

    batch()
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch()
        steps += num_envs
    rate = steps / (time.perf_counter() - started)
    for channel in channels:
        channel.close()
    for _ in channels:
        os.wait()
    return rate


def _serve_bare(channel: socket.socket, executor: Any) -> None:
    reader = FrameReader()
    while data := channel.recv(RECV_BYTES):
        reader.feed(data)
        while (request := reader.next_frame()) is not None:
            channel.sendall(encode_frame(executor.handle(request)))
    os._exit(0)


def deadline(num_envs: int, workers: int, timeout_s: float) -> dict[str, Any]:
    with embedded_cluster(workers, ["coding"], num_envs) as address, BatchClient(address) as client:
        client.wait_for_workers(workers, timeout=120)
        envs = client.make("coding", num_envs)
        envs.reset().raise_for_errors()
        actions = [CodeAction(code="while True:\n    x = 1")] + [CodeAction(code=SNIPPET)] * (
            num_envs - 1
        )
        started = time.perf_counter()
        result = envs.step(actions, timeout_s=timeout_s)
        took = time.perf_counter() - started
        normal = sum(o is not None and o.stdout == "42\n" for o in result.observations[1:])
        looped = result.observations[0]
        envs.close()
    return {
        "batch_s": took,
        "normal_rows": normal,
        "looping_row": looped.stderr if looped is not None else repr(result.errors),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--envs", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--resets", type=int, default=100)
    parser.add_argument("--timeout-s", type=float, default=2.0)
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1

    held = sessions(args.sessions)
    resets = reset_latency(args.resets)
    ours, cpu = runtime_steps_per_s(args.envs, args.workers, args.seconds)
    theirs = openenv_steps_per_s(cores, args.seconds)
    bare = bare_sessions_steps_per_s(args.envs, args.seconds)
    alone = executor_steps_per_s(args.seconds) * cores
    late = deadline(args.envs, args.workers, args.timeout_s)

    table = Table(title=f"bench.coding ({cores} cores)")
    for column in ("case", "measured", "goal", "met"):
        table.add_column(column)
    uss = held["uss_p50_mib"]
    table.add_row(
        f"{held['sessions']:,} sessions on one worker: USS per session p50 (mean)",
        f"{uss:.2f} MiB ({held['uss_mean_mib']:.2f}); zygote RSS {held['zygote_rss_mib']:.0f} MiB;"
        f" reset all {held['reset_all_s']:.1f} s, step all {held['step_all_s']:.2f} s",
        "<= 5 MiB",
        "yes" if uss <= 5 else "no",
    )
    table.add_row(
        "one session's reset p50 (p99)",
        f"{resets['reset_p50_ms']:.1f} ms ({resets['reset_p99_ms']:.1f})",
        "<= 20 ms",
        "yes" if resets["reset_p50_ms"] <= 20 else "no",
    )
    ratio = ours / theirs
    table.add_row(
        f"{args.envs} sessions stepping a snippet, {args.workers} workers vs OpenEnv's server "
        f"({cores} servers, one session each)",
        f"{ours:,.0f} vs {theirs:,.0f} steps/s = {ratio:.1f}x",
        ">= 10x",
        "yes" if ratio >= 10 else "no",
    )
    table.add_row(
        "where the CPU goes, per step of that row",
        ", ".join(f"{role} {us:.0f} µs" for role, us in cpu.items())
        + f"; {sum(cpu.values()):.0f} µs in all",
        "",
        "",
    )
    table.add_row(
        f"floor: {args.envs} bare forked PyExecutor processes on socketpairs, one driver",
        f"{bare:,.0f} steps/s = {bare / theirs:.1f}x OpenEnv; ours is {ours / bare:.2f}x this",
        "",
        "",
    )
    table.add_row(
        f"floor: the executor alone, one process per core ({cores})",
        f"{alone:,.0f} steps/s = {alone / theirs:.1f}x OpenEnv",
        "",
        "",
    )
    table.add_row(
        f"{args.envs} sessions, one in an infinite loop, deadline {args.timeout_s:g} s",
        f"batch {late['batch_s']:.2f} s, {late['normal_rows']}/{args.envs - 1} rows normal; "
        f"loop: {late['looping_row'][:60]}",
        "answers at the deadline",
        "yes"
        if late["normal_rows"] == args.envs - 1 and late["batch_s"] < args.timeout_s + 1
        else "no",
    )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
