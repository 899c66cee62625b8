"""A cluster: a broker, its local workers, an optional gateway and Prometheus metrics, run until
SIGINT/SIGTERM."""

from __future__ import annotations

import multiprocessing
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING

from broker.children import start_child
from broker.core import BrokerConfig
from broker.exposure import local_address
from broker.keys import BrokerKeys
from broker.loop import BrokerServer
from broker.providers.base import WorkerProvider
from broker.providers.docker import DockerProvider, DockerWorkers
from broker.providers.local import LocalProvider
from broker.providers.ray import RayProvider, RayWorkers
from openenv_zmq.curve import CurveKeys
from openenv_zmq.sandbox.setup import SandboxOptions
from openenv_zmq.worker.runner import MAX_THREADS

if TYPE_CHECKING:
    # The gateway needs the gateway extra (FastAPI), a bare broker does not; prometheus_client
    # is imported only when metrics are served.
    from broker.exporter import MetricsServer, MetricsSpec
    from openenv_zmq.gateway.server import GatewaySpec

GATEWAY_STOP_SECONDS = 10.0


@dataclass(frozen=True)
class ClusterSpec:
    """A broker and the local workers it starts."""

    frontend: str
    backend: str
    workers: int = 2
    envs: Sequence[str] = ("echo",)
    capacity: int = 4096
    max_threads: int = MAX_THREADS
    """Threads each worker may run blocking env calls on."""
    config: BrokerConfig = field(default_factory=BrokerConfig)
    gateway: GatewaySpec | None = None
    """Serve OpenEnv's protocol as this says, in a process of its own."""
    app_dir: str | None = None
    """A folder the workers (and the gateway) import envs from, ahead of installed packages."""
    sandbox: SandboxOptions = field(default_factory=SandboxOptions)
    """How the workers contain the sessions of envs that run untrusted code."""
    curve: BrokerKeys | None = None
    """CURVE on both sockets; the local workers and the gateway get this run's own keys."""
    metrics: MetricsSpec | None = None
    """Serve Prometheus metrics as this says, from a thread of the broker's process."""
    docker: DockerWorkers | None = None
    """Start the workers as containers made as this says, not as local processes."""
    ray: RayWorkers | None = None
    """Start the workers as Ray actors as this says, not as local processes."""


def run_cluster(
    spec: ClusterSpec,
    on_ready: Callable[[BrokerServer], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Bind, serve metrics, start the workers, call ``on_ready``, and route until a signal or
    ``stop`` is set. Raises :class:`~openenv_zmq.errors.TransportError` when an address cannot
    be listened on.

    On the way out the workers are stopped and waited for, the sockets (and ipc files) removed
    and the metrics server stopped.
    """
    provider = _provider(spec) if spec.workers else None
    server = BrokerServer(spec.frontend, spec.backend, spec.config, provider, spec.curve)
    try:
        server.bind()
    except BaseException:
        if provider is not None:  # it may hold a folder for its workers' socket already
            provider.stop()
        raise
    exporter = None
    if spec.metrics is not None:
        try:
            exporter = _serve_metrics(spec.metrics, server)
        except BaseException:
            server.close()
            raise
    gateway = (
        None
        if spec.gateway is None
        else _start_gateway(
            spec.gateway,
            local_address(server.frontend_address),
            None if spec.curve is None else spec.curve.local_client,
        )
    )
    stopping = threading.Event()

    def shut_down() -> None:
        # The gateway goes first, while the broker still routes its last requests (it closes
        # its env group on the way out); then the broker stops its workers and itself.
        if gateway is not None:
            _stop_process(gateway)
        server.stop()

    def begin_shutdown() -> None:
        server.wind_down()
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=shut_down, name="shutdown", daemon=True).start()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        begin_shutdown()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
    if stop is not None:

        def stop_when_set() -> None:
            stop.wait()
            begin_shutdown()

        threading.Thread(target=stop_when_set, name="stop-watch", daemon=True).start()
    try:
        if on_ready is not None:
            on_ready(server)
        server.run()
    finally:
        if gateway is not None:
            _stop_process(gateway)
        if exporter is not None:
            exporter.close()


def _provider(spec: ClusterSpec) -> WorkerProvider:
    curve = None if spec.curve is None else spec.curve.local_worker
    if spec.docker is not None:
        curve = None if spec.curve is None else spec.curve.container_worker
        return DockerProvider(
            spec.workers,
            spec.docker,
            envs=spec.envs,
            capacity=spec.capacity,
            heartbeat=spec.config.heartbeat_interval,
            max_threads=spec.max_threads,
            sandbox=spec.sandbox,
            max_message_mb=spec.config.limits.max_message_bytes / 2**20,
            curve=curve,
        )
    worker_kwargs = {
        "envs": list(spec.envs),
        "capacity": spec.capacity,
        "max_threads": spec.max_threads,
        "sandbox": spec.sandbox,
        "heartbeat_interval": spec.config.heartbeat_interval,
        "liveness": spec.config.liveness,
        "limits": spec.config.limits,
        "curve": curve,
    }
    if spec.ray is not None:
        ray = spec.ray
        return RayProvider(
            spec.workers,
            address=ray.address,
            num_cpus=ray.num_cpus,
            memory_mb=ray.memory_mb,
            connect=ray.connect,
            **worker_kwargs,
        )
    return LocalProvider(spec.workers, app_dir=spec.app_dir, **worker_kwargs)


def _serve_metrics(spec: MetricsSpec, server: BrokerServer) -> MetricsServer:
    from broker.exporter import PUBLISH_SECONDS, MetricsServer

    exporter = MetricsServer(spec, lambda: server.published)
    server.publish_every = PUBLISH_SECONDS
    return exporter


def _stop_process(process: BaseProcess) -> None:
    if process.is_alive():
        process.terminate()
    process.join(GATEWAY_STOP_SECONDS)
    if process.is_alive():
        process.kill()
        process.join()


def _start_gateway(spec: GatewaySpec, frontend: str, curve: CurveKeys | None) -> BaseProcess:
    from openenv_zmq.gateway.server import run_gateway

    # The keys cross to the spawned process through its pipe, never its command line.
    process = multiprocessing.get_context("spawn").Process(
        target=run_gateway, args=(frontend, spec, curve), name="openenv-gateway"
    )
    start_child(process)
    return process
