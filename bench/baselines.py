"""Throughput baselines and this runtime, each measured on this machine in env-steps per second.

Every function builds what it measures, steps it for a short warm-up and then for ``duration``
seconds, stops everything it started (processes, servers, sockets) and returns env-steps/s; with
``latency=True``, and for the functions named for a latency, the median seconds of one step call
(one batch) instead. Batches are full (every env steps every time), and every CartPole system gets
fresh random 0/1 actions from :func:`cartpole_actions` each step, so the action source costs all
of them the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import multiprocessing
import os
import queue
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import numpy.typing as npt
import zmq
from cartpole_env.vector import CartPoleVectorEnv
from echo_env import EchoAction
from echo_env.server.echo_environment import EchoEnvironment

from broker.bench import cluster_at, embedded_cluster
from broker.keys import BrokerKeys, init_keys, load_broker_keys
from openenv_zmq import sockets
from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.client.sync import BatchClient
from openenv_zmq.curve import CurveKeys
from openenv_zmq.protocol import Message, Op, encode
from openenv_zmq.protocol.schema import SESSION_BYTES

DEFAULT_DURATION = 3.0
WARMUP = 0.3
"""Seconds stepped before measuring, so that first-call costs (allocations, connection setup,
caches) stay out of the rate."""
MAX_ENVS = 65_536
ASYNC_MAX_ENVS = 256
"""AsyncVectorEnv starts one process per env: more than this would only measure the OS."""
CLUSTER_START_TIMEOUT = 30.0
STEP_TIMEOUT = 60.0
CHILD_START_TIMEOUT = 30.0
CHILD_STOP_TIMEOUT = 10.0
GYM_ID = "CartPole-v1"

ActionsFactory = Callable[[int], Any]
"""Given ``n``, the actions of one full batch of ``n`` envs (called once per step)."""

_rng = np.random.default_rng(0)


def echo_actions(n: int) -> list[EchoAction]:
    return [EchoAction(message="hello")] * n


def cartpole_actions(n: int) -> npt.NDArray[np.int64]:
    return _rng.integers(0, 2, n, dtype=np.int64)


def _check_envs(num_envs: int, limit: int = MAX_ENVS) -> None:
    if not 1 <= num_envs <= limit:
        raise ValueError(f"num_envs must be between 1 and {limit}, got {num_envs}")


def _run_for(step: Callable[[], int], seconds: float) -> tuple[int, float]:
    """Call ``step`` (which returns the env-steps it made) until ``seconds`` have passed, at
    least once; return the env-steps and the seconds it took."""
    start = time.perf_counter()
    steps = 0
    while True:
        steps += step()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return steps, elapsed


def _rate(step: Callable[[], int], duration: float) -> float:
    _run_for(step, WARMUP)
    steps, elapsed = _run_for(step, duration)
    return steps / elapsed


def _median_seconds(call: Callable[[], object], duration: float) -> float:
    """The median seconds of one ``call``, called for ``duration`` seconds after the warm-up."""
    latencies: list[float] = []

    def timed() -> int:
        start = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - start)
        return 1

    _run_for(timed, WARMUP)
    latencies.clear()
    _run_for(timed, duration)
    return float(np.median(latencies))


def _measure(step: Callable[[], int], duration: float, latency: bool) -> float:
    """env-steps/s of ``step`` or, with ``latency``, the median seconds of one call."""
    return _median_seconds(step, duration) if latency else _rate(step, duration)


# ---------------------------------------------------------------------- in-process loops


def inprocess_echo(num_envs: int, duration: float = DEFAULT_DURATION) -> float:
    """A Python loop over ``num_envs`` echo envs doing what a worker does per env: validate the
    action dict, step, dump the observation. The limit for structured envs on one core."""
    _check_envs(num_envs)
    envs = [EchoEnvironment() for _ in range(num_envs)]
    for env in envs:
        env.reset()
    row = {"message": "hello"}

    def step() -> int:
        for env in envs:
            env.step(EchoAction.model_validate(row)).model_dump()
        return num_envs

    return _rate(step, duration)


def inprocess_echo_raw(num_envs: int, duration: float = DEFAULT_DURATION) -> float:
    """:func:`inprocess_echo` without validating actions or dumping observations."""
    _check_envs(num_envs)
    envs = [EchoEnvironment() for _ in range(num_envs)]
    for env in envs:
        env.reset()
    action = EchoAction(message="hello")

    def step() -> int:
        for env in envs:
            env.step(action)
        return num_envs

    return _rate(step, duration)


def inprocess_cartpole(num_envs: int, duration: float = DEFAULT_DURATION) -> float:
    """``CartPoleVectorEnv`` stepped directly with numpy actions, ended episodes reset at once."""
    _check_envs(num_envs)
    env = CartPoleVectorEnv(num_envs)
    indices = np.arange(num_envs, dtype=np.intp)
    env.reset(indices, list(range(num_envs)))

    def step() -> int:
        _, _, terminated, truncated = env.step(indices, cartpole_actions(num_envs))
        done = indices[terminated | truncated]
        if len(done):
            env.reset(done, [None] * len(done))
        return num_envs

    try:
        return _rate(step, duration)
    finally:
        env.close()


# ---------------------------------------------------------------------- Gymnasium and EnvPool


def _gym_measure(
    envs: gymnasium.vector.VectorEnv[Any, Any, Any], duration: float, latency: bool
) -> float:
    """Step a Gymnasium vector env (default autoreset, ``next_step``) with random actions."""
    try:
        envs.reset(seed=0)
        n = envs.num_envs

        def step() -> int:
            envs.step(cartpole_actions(n))
            return n

        return _measure(step, duration, latency)
    finally:
        envs.close()


def gym_sync(num_envs: int, duration: float = DEFAULT_DURATION, *, latency: bool = False) -> float:
    """Gymnasium's ``SyncVectorEnv`` of CartPole-v1: ``num_envs`` envs stepped in one loop."""
    _check_envs(num_envs)
    make = partial(gymnasium.make, GYM_ID)
    return _gym_measure(gymnasium.vector.SyncVectorEnv([make] * num_envs), duration, latency)


def gym_async(num_envs: int, duration: float = DEFAULT_DURATION, *, latency: bool = False) -> float:
    """Gymnasium's ``AsyncVectorEnv`` of CartPole-v1: one process per env (at most 256).

    Its processes are forked from this one: run it before this process holds sockets, threads or
    child processes, which every fork would inherit.
    """
    _check_envs(num_envs, ASYNC_MAX_ENVS)
    make = partial(gymnasium.make, GYM_ID)
    return _gym_measure(gymnasium.vector.AsyncVectorEnv([make] * num_envs), duration, latency)


def envpool_cartpole(
    num_envs: int,
    num_threads: int = 0,
    duration: float = DEFAULT_DURATION,
    *,
    latency: bool = False,
) -> float:
    """EnvPool's CartPole-v1 (Gymnasium API): the best of its synchronous mode
    (``batch_size = num_envs``) and asynchronous mode (``batch_size = num_envs // 2``, EnvPool's
    ``send`` / ``recv``), each with ``num_threads`` threads (0: EnvPool's default, one per core)
    and with one thread. ``duration`` is shared among the settings. With ``latency``, the lowest
    median seconds of one synchronous ``step`` of all ``num_envs`` envs, of the two thread counts.

    Raises :class:`ImportError` when EnvPool is not installed.
    """
    _check_envs(num_envs)
    envpool = importlib.import_module("envpool")
    batches = (num_envs,) if latency else (num_envs, num_envs // 2)
    settings = sorted(
        {(batch, threads) for batch in batches for threads in (num_threads, 1) if batch > 0}
    )
    per_setting = duration / len(settings)
    best = min if latency else max
    return best(
        _envpool_measure(envpool, num_envs, b, t, per_setting, latency) for b, t in settings
    )


def _envpool_measure(
    envpool: Any,
    num_envs: int,
    batch_size: int,
    num_threads: int,
    duration: float,
    latency: bool,
) -> float:
    with warnings.catch_warnings():
        # EnvPool 1.2.5 builds Gymnasium Box spaces from float64 bounds, which Gymnasium 1.x
        # warns about while casting them to the float32 the observations are anyway.
        warnings.simplefilter("ignore", UserWarning)
        pool = envpool.make(
            GYM_ID,
            env_type="gymnasium",
            num_envs=num_envs,
            batch_size=batch_size,
            num_threads=num_threads,
            seed=0,
        )
        try:
            if batch_size == num_envs:
                pool.reset()

                def step() -> int:
                    pool.step(cartpole_actions(num_envs))
                    return num_envs

            else:
                pool.async_reset()

                def step() -> int:
                    *_, info = pool.recv()
                    pool.send(cartpole_actions(batch_size), info["env_id"])
                    return batch_size

            return _measure(step, duration, latency)
        finally:
            pool.close()


# ---------------------------------------------------------------------- OpenEnv's server


def openenv_server_echo(sessions: int = 64, duration: float = DEFAULT_DURATION) -> float:
    """OpenEnv's own server (uvicorn, one process) with ``sessions`` concurrent ``/ws`` sessions
    of an echo env, driven by openenv-core's ``GenericEnvClient`` from one asyncio loop."""
    # Imported here: openenv-core's server module imports Gradio, seconds that nothing else needs.
    from bench.openenv_server import openenv_echo_server, step_sessions

    _check_envs(sessions)
    with openenv_echo_server(sessions) as base_url:
        return asyncio.run(step_sessions(base_url, sessions, WARMUP, duration))


# ---------------------------------------------------------------------- this runtime


def runtime(
    env: str,
    num_envs: int,
    workers: int,
    actions_factory: ActionsFactory,
    duration: float = DEFAULT_DURATION,
    *,
    address: str | None = None,
    autoreset: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    curve: CurveKeys | None = None,
    latency: bool = False,
) -> float:
    """This runtime: ``num_envs`` envs stepped in full batches through a broker and ``workers``
    local workers. Starts an embedded cluster unless ``address`` names a running broker (which
    must have ``workers`` workers hosting ``env``; ``curve``: the client's keys when it requires
    them). Array envs must answer with one array of observations; any env error fails the
    measurement. With ``latency``, the median seconds of one step call instead of env-steps/s.
    """
    _check_envs(num_envs)
    with (
        cluster_at(address, env, workers, num_envs) as broker,
        BatchClient(
            broker, connect_timeout=CLUSTER_START_TIMEOUT, timeout=STEP_TIMEOUT, curve_dir=curve
        ) as client,
    ):
        client.wait_for_workers(workers, env, CLUSTER_START_TIMEOUT)
        with client.make(env, num_envs, autoreset=autoreset) as group:
            group.reset(seed=0)

            def step() -> int:
                actions = actions_factory(num_envs)
                result = group.step(actions)
                result.raise_for_errors()
                if isinstance(actions, np.ndarray) and not isinstance(
                    result.observations, np.ndarray
                ):
                    raise TypeError(
                        f"{env!r} answered array actions with {type(result.observations).__name__}"
                        " observations, not one array"
                    )
                return num_envs

            return _measure(step, duration, latency)


@contextlib.contextmanager
def broker_keys() -> Iterator[BrokerKeys]:
    """A throwaway broker key folder; a client uses the broker's own client key."""
    with tempfile.TemporaryDirectory(prefix="openenv-curve-") as folder:
        init_keys(Path(folder) / "keys")
        yield load_broker_keys(Path(folder) / "keys")


def runtime_batch1_tcp(duration: float = DEFAULT_DURATION, *, with_curve: bool) -> float:
    """Median seconds of a 1-env echo step through a broker and one worker on 127.0.0.1 TCP
    ports, where CURVE is used (ipc sockets need none): plain, or ``with_curve`` on both sockets
    and the client, as :mod:`bench.curve` sets them up."""
    with contextlib.ExitStack() as stack:
        keys = stack.enter_context(broker_keys()) if with_curve else None
        address = stack.enter_context(embedded_cluster(1, ["echo"], 1, transport="tcp", curve=keys))
        client_keys = None if keys is None else keys.local_client
        return runtime(
            "echo", 1, 1, echo_actions, duration, address=address, curve=client_keys, latency=True
        )


def one_env_step_frames() -> list[bytes]:
    """The frames a client sends for a 1-env echo step (its session and group included)."""
    message = Message(
        Op.STEP,
        request_id=1,
        worker=1,
        env_ids=np.zeros(1, np.int64),
        parts={"actions": [EchoAction(message="hello").model_dump()]},
        session=bytes(SESSION_BYTES),
        group=0,
    )
    return [bytes(frame) for frame in encode(message)]


def _echo_router(port_queue: multiprocessing.Queue[int], stop: Event, parent: int) -> None:
    """A ROUTER on a random 127.0.0.1 port sending every message back to its sender, until
    ``stop`` is set or its parent process is gone."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    # The broker's own ROUTER recipe, so the floor differs from the broker only by its code.
    router = sockets.router(context, "tcp://127.0.0.1:*")
    try:
        port_queue.put(int(sockets.endpoint(router).rsplit(":", 1)[1]))
        while not stop.is_set() and os.getppid() == parent:
            if router.poll(100, zmq.POLLIN):
                router.send_multipart(router.recv_multipart(copy=False), copy=False)
    finally:
        router.close(linger=0)
        context.term()


def direct_dealer_router_p50(duration: float = DEFAULT_DURATION) -> float:
    """Median seconds of a round trip of a 1-env step message over a bare DEALER -> ROUTER pair
    on 127.0.0.1, the ROUTER echoing from another process: the floor for a broker round trip."""
    context = multiprocessing.get_context("spawn")
    port_queue: multiprocessing.Queue[int] = context.Queue()
    stop = context.Event()
    process = context.Process(
        target=_echo_router, args=(port_queue, stop, os.getpid()), name="echo-router", daemon=True
    )
    process.start()
    dealer: zmq.Socket[bytes] = sockets.configure(zmq.Context.instance().socket(zmq.DEALER))
    try:
        try:
            port = port_queue.get(timeout=CHILD_START_TIMEOUT)
        except queue.Empty:
            raise TimeoutError(
                f"the echoing ROUTER did not start within {CHILD_START_TIMEOUT:g} s"
            ) from None
        dealer.connect(f"tcp://127.0.0.1:{port}")
        frames = one_env_step_frames()

        def round_trip() -> None:
            dealer.send_multipart(frames)
            if not dealer.poll(int(STEP_TIMEOUT * 1000), zmq.POLLIN):
                raise TimeoutError(f"no echo within {STEP_TIMEOUT:g} s")
            dealer.recv_multipart(copy=False)

        return _median_seconds(round_trip, duration)
    finally:
        dealer.close(linger=0)
        stop.set()
        process.join(CHILD_STOP_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join()
        process.close()
        port_queue.close()
