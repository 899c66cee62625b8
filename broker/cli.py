"""``openenv-broker``: run a broker, a worker, ask a broker's status, benchmark, or make keys."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

import openenv_zmq
from broker.bench import BenchReport, embedded_cluster, run_bench
from broker.cluster import ClusterSpec, run_cluster
from broker.core import BrokerConfig
from broker.exposure import advertised, is_wildcard, port_of, reachable_from_other_hosts
from broker.images import DEFAULT_BASE_IMAGE, build_worker_image
from broker.keys import BrokerKeys, Role, add_peer, init_keys, load_broker_keys
from broker.loop import BrokerServer
from broker.providers.docker import (
    CONTAINERS_LACK,
    DEFAULT_IMAGE,
    DockerWorkers,
    check_image,
    check_runtime,
    docker_client,
)
from broker.providers.ray import RayWorkers, ray_preflight
from broker.status_view import status_view
from broker.status_view import watch as watch_status
from openenv_zmq.client.pulse import LIVENESS
from openenv_zmq.client.sync import BatchClient
from openenv_zmq.curve import CurveKeys, load_bundle
from openenv_zmq.errors import (
    ActionValidationError,
    CurveKeyError,
    EnvNotFound,
    OpenEnvZmqError,
    ProviderUnavailable,
    SandboxError,
)
from openenv_zmq.proctitle import name_process
from openenv_zmq.protocol import DEFAULT_LIMITS, Limits
from openenv_zmq.sandbox.layers import Layer, SandboxPolicy, SessionLimits
from openenv_zmq.sandbox.setup import SandboxOptions, session_factories
from openenv_zmq.worker.origin import INSTANCE_ENV, PROVIDER_ENV, worker_origin
from openenv_zmq.worker.runner import MAX_THREADS

console = Console()
DEFAULT_FRONTEND = "tcp://127.0.0.1:5555"
DEFAULT_BACKEND = "tcp://127.0.0.1:5556"
DRAIN_TIMEOUT = 25.0
"""A worker's default ``--drain-timeout``: below Kubernetes' default grace period of 30 s."""

_env_option = click.option(
    "--env",
    "envs",
    multiple=True,
    default=("echo",),
    show_default=True,
    help="Env the workers host: a registered name or module:Class. Repeat for several.",
)


def _address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A ZeroMQ endpoint the broker speaks (``tcp://HOST:PORT`` or ``ipc://PATH``), else a usage
    error naming the option."""
    if value is None:
        return None
    scheme, separator, rest = value.partition("://")
    if not separator or scheme not in ("tcp", "ipc") or not rest:
        raise click.BadParameter(f"{value!r} is not tcp://HOST:PORT or ipc://PATH")
    return value


def _advertise(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An address other hosts connect to (``tcp://HOST:PORT``), else a usage error saying why."""
    if value is None:
        return None
    try:
        return advertised(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _identity(value: str | None) -> str | None:
    """A socket identity ZeroMQ takes: 1 to 255 bytes, not starting with a zero byte."""
    if value is not None and not (0 < len(value.encode()) <= 255 and not value.startswith("\0")):
        raise click.BadParameter(
            "must be 1 to 255 bytes, not starting with a zero byte", param_hint="--identity"
        )
    return value


_POSITIVE_INT = click.IntRange(min=1)
_POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)
_PORT = click.IntRange(1, 65535)
_capacity_option = click.option(
    "--capacity",
    type=_POSITIVE_INT,
    default=4096,
    show_default=True,
    help="Env instances one worker may host.",
)
_max_threads_option = click.option(
    "--max-threads",
    type=_POSITIVE_INT,
    default=MAX_THREADS,
    show_default=True,
    help="Threads one worker may run blocking env calls on (envs with a concurrency).",
)
_heartbeat_option = click.option(
    "--heartbeat",
    type=_POSITIVE_FLOAT,
    default=1.0,
    show_default=True,
    help="Seconds between heartbeats; a peer silent for 2.5 of them is dead.",
)


_app_dir_option = click.option(
    "--app-dir",
    type=click.Path(exists=True, file_okay=False, resolve_path=True),
    default=None,
    help="Import envs from this folder too, ahead of installed packages (uvicorn's --app-dir).",
)
_max_sessions_option = click.option(
    "--max-sessions",
    type=_POSITIVE_INT,
    default=64,
    show_default=True,
    help="Concurrent gateway sessions; one more is refused with CAPACITY_REACHED.",
)
_idle_timeout_option = click.option(
    "--idle-timeout",
    type=_POSITIVE_FLOAT,
    default=None,
    help="Close a gateway session (socket and env slot) idle for this many seconds.",
)
_header_timeout_option = click.option(
    "--header-timeout",
    type=_POSITIVE_FLOAT,
    default=10.0,
    show_default=True,
    help="Close a gateway connection whose request headers take longer than this many seconds.",
)
_web_option = click.option(
    "--web/--no-web",
    default=None,
    help="Serve the web interface at /web/ [default: as ENABLE_WEB_INTERFACE says].",
)
_max_frame_option = click.option(
    "--max-frame-mb",
    type=_POSITIVE_FLOAT,
    default=100.0,
    show_default=True,
    help="A bigger WebSocket frame closes its connection with 1009 (message too big).",
)
_max_message_option = click.option(
    "--max-message-mb",
    type=_POSITIVE_FLOAT,
    default=DEFAULT_LIMITS.max_message_bytes / 2**20,
    show_default=True,
    help="Messages over this size are refused with MessageTooLarge; give workers on other hosts"
    " the broker's value, or replies it forwards may be over theirs.",
)


def _limits(max_message_mb: float) -> Limits:
    max_message_bytes = int(max_message_mb * 2**20)
    return Limits(
        max_header_bytes=min(DEFAULT_LIMITS.max_header_bytes, max_message_bytes),
        max_message_bytes=max_message_bytes,
    )


_FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)


def _bundle(ctx: click.Context, param: click.Parameter, value: Path | None) -> CurveKeys | None:
    """The keys of the bundle folder ``value``, else a usage error saying what is wrong."""
    if value is None:
        return None
    try:
        return load_bundle(value)
    except CurveKeyError as exc:
        raise click.BadParameter(str(exc)) from None


def _bundle_option(role: Role) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option(
        "--curve-dir",
        "curve",
        type=_FOLDER,
        callback=_bundle,
        default=None,
        help=f"Use CURVE with the bundle `openenv-broker keys add DIR --{role} NAME` wrote"
        " (for a broker started with --curve-dir).",
    )


def _broker_keys(
    ctx: click.Context, param: click.Parameter, value: Path | None
) -> BrokerKeys | None:
    if value is None:
        return None
    try:
        return load_broker_keys(value)
    except CurveKeyError as exc:
        raise click.BadParameter(str(exc)) from None


def _check_exposure(addresses: dict[str, str], curve: bool, insecure: bool) -> None:
    """A usage error (exit code 2) for a bind address other hosts reach, unless CURVE guards it
    or the operator said ``--insecure``: without keys, whoever reaches it may use the broker."""
    exposed = {o: a for o, a in addresses.items() if reachable_from_other_hosts(a)}
    if curve or not exposed:
        return
    if insecure:
        for option, address in exposed.items():
            logging.getLogger(__name__).warning(
                "%s %s admits any peer that reaches it (--insecure)", option, address
            )
        return
    option, address = next(iter(exposed.items()))
    raise click.UsageError(
        f"{option} {address} is reachable from other hosts, and without keys anyone there could"
        " use the broker: pass --curve-dir DIR (keys from `openenv-broker keys init DIR`), or"
        " --insecure to run without them"
    )


_LAYERS = click.Choice([layer.value for layer in Layer])


def _sandbox_options(command: Callable[..., None]) -> Callable[..., None]:
    """The operator's sandbox flags for contained envs (the coding env); clients have none."""
    options = (
        click.option(
            "--unsafe-in-process-code",
            is_flag=True,
            help="Run contained envs' code inside the worker with no sandbox: trusted code only.",
        ),
        click.option(
            "--sandbox-require",
            type=_LAYERS,
            multiple=True,
            help="Refuse to start without this best-effort sandbox layer. Repeatable.",
        ),
        click.option(
            "--sandbox-optional",
            type=_LAYERS,
            multiple=True,
            help="Start even without this layer, required by default (seccomp, rlimits).",
        ),
        click.option(
            "--session-memory",
            type=_POSITIVE_INT,
            default=SessionLimits.memory_mb,
            show_default=True,
            help="MiB a contained session may allocate beyond the interpreter.",
        ),
        click.option(
            "--session-cpu",
            type=_POSITIVE_INT,
            default=SessionLimits.cpu_s,
            show_default=True,
            help="CPU seconds a contained session's process may use over its episode.",
        ),
    )
    for option in reversed(options):
        command = option(command)
    return command


def _sandbox(
    envs: Sequence[str],
    unsafe_in_process_code: bool,
    sandbox_require: Sequence[str],
    sandbox_optional: Sequence[str],
    session_memory: int,
    session_cpu: int,
    probe: bool,
) -> SandboxOptions:
    """The flags as options; with ``probe``, a required layer this host cannot give is a usage
    error here (exit code 2) rather than a worker that dies at start again and again."""
    overlap = set(sandbox_require) & set(sandbox_optional)
    if overlap:
        raise click.UsageError(
            f"--sandbox-require and --sandbox-optional both name {', '.join(sorted(overlap))}"
        )
    policy = SandboxPolicy(
        limits=SessionLimits(memory_mb=session_memory, cpu_s=session_cpu)
    ).adjusted(require=map(Layer, sandbox_require), lower=map(Layer, sandbox_optional))
    options = SandboxOptions(policy=policy, unsafe_in_process=unsafe_in_process_code)
    if probe and not unsafe_in_process_code and session_factories(envs):
        from openenv_zmq.sandbox.contained import ContainedHost

        try:
            ContainedHost(policy).close()
        except SandboxError as exc:
            raise click.UsageError(str(exc)) from None
    return options


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(openenv_zmq.__version__, prog_name="openenv-broker")
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
def main(log_level: str) -> None:
    """Step thousands of OpenEnv environments in batches over ZeroMQ."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@main.command()
@click.option(
    "--bind",
    callback=_address,
    default=DEFAULT_FRONTEND,
    show_default=True,
    help="Address clients use.",
)
@click.option(
    "--worker-bind",
    callback=_address,
    default=DEFAULT_BACKEND,
    show_default=True,
    help="Address workers join.",
)
@click.option(
    "--advertise",
    callback=_advertise,
    default=None,
    metavar="tcp://HOST:PORT",
    help="The address workers on other hosts join at, printed at start: what they reach"
    " --worker-bind at when it listens on every interface (0.0.0.0, *).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Workers to start (as --provider says); 0 for a bare broker that workers join.",
)
@click.option(
    "--provider",
    type=click.Choice(["local", "docker", "ray"]),
    default="local",
    show_default=True,
    help="How the workers are started: local processes, containers on this host's Docker"
    " engine (no network; they join through an ipc socket), or Ray actors spread over a Ray"
    " cluster (they join over TCP: at --advertise when not all on this host).",
)
@click.option(
    "--ray-address",
    default="auto",
    show_default=True,
    help="--provider ray: the cluster: auto (RAY_ADDRESS, else the one `ray start` ran here),"
    " the head's HOST:PORT, ray://HOST:PORT, or local (a Ray of its own on this host).",
)
@click.option(
    "--image",
    default=DEFAULT_IMAGE,
    show_default=True,
    help="--provider docker: the worker image (`openenv-broker image build` makes it).",
)
@click.option(
    "--worker-cpus",
    type=_POSITIVE_FLOAT,
    default=None,
    help="CPUs each docker worker may use, or each Ray actor reserves [default: 1].",
)
@click.option(
    "--worker-memory",
    type=_POSITIVE_INT,
    default=None,
    metavar="MIB",
    help="MiB each docker worker may use [default: 4096], or each Ray actor reserves [default:"
    " none].",
)
@click.option(
    "--worker-runtime",
    default=None,
    help="--provider docker: the engine's container runtime, e.g. runsc for gVisor [default: the"
    " engine's].",
)
@click.option(
    "--worker-pids",
    type=_POSITIVE_INT,
    default=DockerWorkers.pids,
    show_default=True,
    help="--provider docker: processes and threads each worker may run.",
)
@_env_option
@_app_dir_option
@_capacity_option
@_max_threads_option
@_heartbeat_option
@click.option(
    "--lease",
    type=_POSITIVE_FLOAT,
    default=BrokerConfig().lease,
    show_default=True,
    help="Seconds a client that sends nothing, heartbeats included, keeps its envs; then they"
    " are closed and their slots freed.",
)
@click.option(
    "--max-envs-per-client",
    type=_POSITIVE_INT,
    default=None,
    help="Env slots one client may hold at once: one CURVE key over all its sessions, or one"
    " session without keys [default: no limit]. A gateway is one client: give it at least its"
    " --max-sessions.",
)
@click.option(
    "--gateway-port",
    type=_PORT,
    default=None,
    help="Also serve OpenEnv's protocol for the first --env on this port (the gateway extra).",
)
@click.option(
    "--gateway-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the gateway serves on (0.0.0.0 inside a container or Space).",
)
@_max_sessions_option
@_idle_timeout_option
@_header_timeout_option
@_web_option
@_max_frame_option
@_max_message_option
@click.option(
    "--metrics-port",
    type=_PORT,
    default=None,
    help="Serve Prometheus metrics at http://--metrics-host:PORT/metrics.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics are served on (0.0.0.0 for a scraper on another host or pod).",
)
@click.option(
    "--curve-dir",
    "curve",
    type=_FOLDER,
    callback=_broker_keys,
    default=None,
    help="Require CURVE keys on both sockets: the broker's key folder (`openenv-broker keys"
    " init`); clients and workers are admitted by its clients/ and workers/ allowlists.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Bind an address other hosts reach without --curve-dir: anyone there may use the broker.",
)
@_sandbox_options
def start(
    bind: str,
    worker_bind: str,
    advertise: str | None,
    workers: int,
    provider: str,
    ray_address: str,
    image: str,
    worker_cpus: float | None,
    worker_memory: int | None,
    worker_pids: int,
    worker_runtime: str | None,
    envs: tuple[str, ...],
    app_dir: str | None,
    capacity: int,
    max_threads: int,
    heartbeat: float,
    lease: float,
    max_envs_per_client: int | None,
    gateway_port: int | None,
    gateway_host: str,
    max_sessions: int,
    idle_timeout: float | None,
    header_timeout: float,
    web: bool | None,
    max_frame_mb: float,
    max_message_mb: float,
    metrics_port: int | None,
    metrics_host: str,
    curve: BrokerKeys | None,
    insecure: bool,
    **sandbox_flags: Any,
) -> None:
    """Run a broker in the foreground until SIGINT or SIGTERM."""
    _check_exposure({"--bind": bind, "--worker-bind": worker_bind}, curve is not None, insecure)
    docker = None
    if provider == "docker":
        docker = DockerWorkers(
            image,
            worker_cpus or DockerWorkers.cpus,
            worker_memory or DockerWorkers.memory_mb,
            worker_pids,
            runtime=worker_runtime,
        )
        if workers:
            _check_docker(docker, envs, app_dir, sandbox_flags["sandbox_require"])
    elif workers:
        _check_envs(envs, app_dir)
    ray = None
    if provider == "ray":
        ray = RayWorkers(ray_address, worker_cpus or 1, worker_memory, connect=advertise)
        if workers:
            _check_ray(ray, worker_bind, app_dir)
    # Contained sessions are probed where they run: inside the containers, not here.
    sandbox = _sandbox(envs, probe=workers > 0 and docker is None, **sandbox_flags)
    gateway = None
    if lease <= LIVENESS * heartbeat:
        raise click.BadParameter(
            f"{lease:g} s is too short for --heartbeat {heartbeat:g}: a client heartbeats every"
            f" {heartbeat:g} s, so give it more than {LIVENESS * heartbeat:g} s",
            param_hint="--lease",
        )
    if gateway_port is not None and (max_envs_per_client or max_sessions) < max_sessions:
        raise click.BadParameter(
            f"{max_envs_per_client} is below --max-sessions {max_sessions}: the gateway is one"
            " client, holding an env slot per session",
            param_hint="--max-envs-per-client",
        )
    if gateway_port is not None:
        try:
            from openenv_zmq.gateway.server import GatewaySpec
        except ModuleNotFoundError as exc:  # the gateway extra is not installed: it says so
            raise click.UsageError(str(exc)) from None

        gateway = GatewaySpec(
            env=envs[0],
            port=gateway_port,
            host=gateway_host,
            max_sessions=max_sessions,
            idle_timeout_s=idle_timeout,
            header_timeout_s=header_timeout,
            web=web,
            max_frame_mb=max_frame_mb,
            app_dir=app_dir,
        )
    metrics = None
    if metrics_port is not None:
        from broker.exporter import MetricsSpec

        metrics = MetricsSpec(port=metrics_port, host=metrics_host)
    spec = ClusterSpec(
        frontend=bind,
        backend=worker_bind,
        workers=workers,
        envs=envs,
        capacity=capacity,
        max_threads=max_threads,
        config=BrokerConfig(
            heartbeat_interval=heartbeat,
            limits=_limits(max_message_mb),
            lease=lease,
            max_envs_per_client=max_envs_per_client,
        ),
        gateway=gateway,
        app_dir=app_dir,
        sandbox=sandbox,
        curve=curve,
        metrics=metrics,
        docker=docker,
        ray=ray,
    )

    def ready(server: BrokerServer) -> None:
        name_process("broker", server.frontend_address)
        click.echo(f"broker ready: clients connect to {server.frontend_address}")
        if advertise is None:
            click.echo(f"workers join at {server.backend_address}")
        else:
            click.echo(f"workers join at {advertise} (bound to {server.backend_address})")
        if advertise is None and is_wildcard(server.backend_address):
            click.echo(_wildcard_hint(server.backend_address), err=True)
        if curve is not None:
            click.echo(f"CURVE on: keys admitted by {curve.folder}/clients and /workers")
        if workers:
            where = f"{provider} worker(s)" + (f" from {image}" if docker else "")
            click.echo(f"starting {workers} {where} hosting {', '.join(envs)}")
        if gateway_port is not None:
            click.echo(f"gateway for {envs[0]!r} on http://{gateway_host}:{gateway_port}")
        if metrics_port is not None:
            click.echo(f"metrics on http://{metrics_host}:{metrics_port}/metrics")
        sys.stdout.flush()

    run_cluster(spec, on_ready=ready)
    click.echo("broker stopped")


def _wildcard_hint(bound: str) -> str:
    port = port_of(bound)
    return (
        f"hint: {bound} listens on every interface and is no address to connect to: workers on"
        f" other hosts join at tcp://HOST:{port}, HOST being this host's address they reach;"
        f" --advertise tcp://HOST:{port} prints it here (local workers connect over loopback)"
    )


def _check_docker(
    docker: DockerWorkers,
    envs: tuple[str, ...],
    app_dir: str | None,
    sandbox_require: Sequence[str],
) -> None:
    """A usage error (exit code 2) naming what the docker workers lack, before anything starts:
    a sandbox layer no container gives, the docker package, an engine, the image, or an env in
    it."""
    beyond = sorted(set(sandbox_require) & CONTAINERS_LACK)
    if beyond:
        raise click.UsageError(
            f"docker workers cannot have the sandbox layer(s) {', '.join(beyond)} (their user is"
            " not root and may not make namespaces or cgroups); the container stands in for them:"
            " drop --sandbox-require for those"
        )
    if app_dir is not None:
        raise click.UsageError(
            "--app-dir is for local workers; docker workers import envs from their image:"
            " openenv-broker image build --package DIR"
        )
    try:
        with contextlib.closing(docker_client()) as client:
            check_runtime(client, docker.runtime)
            check_image(client, docker.image, envs, docker.runtime)
    except ProviderUnavailable as exc:
        raise click.UsageError(str(exc)) from None


def _check_ray(ray: RayWorkers, worker_bind: str, app_dir: str | None) -> None:
    """A usage error (exit code 2) naming what the Ray workers lack, before anything starts: an
    address they can join at, the ray package, or a cluster at the address. Takes at most about
    20 s."""
    if app_dir is not None:
        raise click.UsageError(
            "--app-dir is for local workers; Ray workers import envs installed on every node"
        )
    if not worker_bind.startswith("tcp://"):
        raise click.UsageError(
            f"Ray workers join over TCP, and --worker-bind {worker_bind} is not tcp://HOST:PORT"
        )
    head = ray.address.removeprefix("ray://").rpartition(":")[0] if ray.address else ""
    remote = ray.address not in ("auto", "local") and reachable_from_other_hosts(f"tcp://{head}:1")
    unreachable = is_wildcard(worker_bind) or not reachable_from_other_hosts(worker_bind)
    if remote and unreachable and ray.connect is None:
        raise click.UsageError(
            f"the Ray cluster at {ray.address} may have nodes on other hosts, which cannot join at"
            f" {worker_bind}: bind an address they reach and pass it as --advertise tcp://HOST:PORT"
        )
    try:
        ray_preflight(ray.address)
    except ProviderUnavailable as exc:
        raise click.UsageError(str(exc)) from None


def _check_envs(envs: tuple[str, ...], app_dir: str | None) -> None:
    """Each env resolves here (from ``app_dir`` too), else a usage error naming it and why (exit
    code 2): a worker that cannot import its env would only die and be restarted."""
    from openenv_zmq.registry import add_app_dir, resolve_env

    if app_dir is not None:
        add_app_dir(app_dir)
    for env in envs:
        try:
            resolve_env(env)
        except EnvNotFound as exc:
            raise click.BadParameter(str(exc), param_hint="'--env'") from None


@main.command()
@click.option(
    "--connect",
    callback=_address,
    required=True,
    help="The broker's worker address (--worker-bind).",
)
@_env_option
@_app_dir_option
@_capacity_option
@_max_threads_option
@_heartbeat_option
@click.option("--name", default=None, help="Worker name shown in status [default: host-pid].")
@click.option(
    "--identity",
    callback=lambda ctx, param, value: _identity(value),
    default=None,
    help="The socket identity to register with: a provider that starts workers passes an"
    " unguessable one, so it tells its own from any peer claiming a name [default: random].",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=DRAIN_TIMEOUT,
    show_default=True,
    help="On SIGTERM or SIGINT take no new envs and serve the ones here until they are closed,"
    " for this many seconds at most, then leave (keep it below Kubernetes'"
    " terminationGracePeriodSeconds); a second signal stops at once; 0 stops at once.",
)
@click.option(
    "--health-file",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Keep this file up to date for exec probes: it holds starting, ready or draining and is"
    " rewritten every second while the worker is responsive.",
)
@click.option(
    "--provider",
    default=None,
    help=f"Who started this worker, shown in status: docker, ray, kubernetes... [default:"
    f" ${PROVIDER_ENV}, else remote].",
)
@click.option(
    "--instance",
    default=None,
    help=f"Its container, actor or pod id, shown in status [default: ${INSTANCE_ENV}; under"
    " docker or kubernetes, $HOSTNAME].",
)
@_max_message_option
@_bundle_option(Role.WORKER)
@_sandbox_options
def worker(
    connect: str,
    envs: tuple[str, ...],
    app_dir: str | None,
    capacity: int,
    max_threads: int,
    heartbeat: float,
    name: str | None,
    identity: str | None,
    drain_timeout: float,
    health_file: Path | None,
    provider: str | None,
    instance: str | None,
    max_message_mb: float,
    curve: CurveKeys | None,
    **sandbox_flags: Any,
) -> None:
    """Run one worker that joins a broker (what a container or another host runs)."""
    from openenv_zmq.worker.loop import run_worker

    try:
        origin = worker_origin(provider, instance)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _check_envs(envs, app_dir)
    try:
        run_worker(
            connect=connect,
            envs=list(envs),
            capacity=capacity,
            name=name,
            identity=None if identity is None else identity.encode(),
            heartbeat_interval=heartbeat,
            liveness=BrokerConfig().liveness,
            max_threads=max_threads,
            sandbox=_sandbox(envs, probe=False, **sandbox_flags),
            limits=_limits(max_message_mb),
            curve=curve,
            drain_timeout=drain_timeout,
            health_file=health_file,
            provider=origin.provider,
            instance=origin.instance,
        )
    except SandboxError as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@click.option(
    "--connect",
    callback=_address,
    default=DEFAULT_FRONTEND,
    show_default=True,
    help="Broker address.",
)
@click.option("--env", default="echo", show_default=True, help="Env every session gets.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--port", type=_PORT, default=8000, show_default=True, help="Port to serve on.")
@_app_dir_option
@_max_sessions_option
@_idle_timeout_option
@_header_timeout_option
@_web_option
@_max_frame_option
@_bundle_option(Role.CLIENT)
def gateway(
    connect: str,
    env: str,
    host: str,
    port: int,
    app_dir: str | None,
    max_sessions: int,
    idle_timeout: float | None,
    header_timeout: float,
    web: bool | None,
    max_frame_mb: float,
    curve: CurveKeys | None,
) -> None:
    """Serve OpenEnv's WebSocket/HTTP protocol for an env hosted by a broker (the gateway
    extra: pip install 'openenv-zmq[gateway]')."""
    try:
        from openenv_zmq.gateway.server import GatewaySpec, run_gateway
    except ModuleNotFoundError as exc:  # the gateway extra is not installed: it says so
        raise click.UsageError(str(exc)) from None

    click.echo(f"gateway for {env!r} on http://{host}:{port} (broker {connect})")
    sys.stdout.flush()
    spec = GatewaySpec(
        env=env,
        port=port,
        host=host,
        max_sessions=max_sessions,
        idle_timeout_s=idle_timeout,
        header_timeout_s=header_timeout,
        web=web,
        max_frame_mb=max_frame_mb,
        app_dir=app_dir,
    )
    run_gateway(connect, spec, curve)


@main.command()
@click.option(
    "--connect",
    callback=_address,
    default=DEFAULT_FRONTEND,
    show_default=True,
    help="Broker address.",
)
@click.option(
    "--timeout",
    type=_POSITIVE_FLOAT,
    default=5.0,
    show_default=True,
    help="Seconds to wait for the broker.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
@click.option(
    "--watch",
    is_flag=True,
    help="A live view: workers, slots, env-steps/s, requests/s, latency p50/p99 and errors"
    " since the last refresh. Ctrl-C ends it.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes of --watch.",
)
@_bundle_option(Role.CLIENT)
def status(
    connect: str,
    timeout: float,
    as_json: bool,
    watch: bool,
    interval: float,
    curve: CurveKeys | None,
) -> None:
    """Print a broker's workers (where each runs, its env slots, steps served, age), its
    client sessions, and what it has counted since it started."""
    if watch and as_json:
        raise click.UsageError("--json prints one status; --watch is a live view: pick one")
    with BatchClient(connect, connect_timeout=timeout, timeout=timeout, curve_dir=curve) as client:
        if watch:
            watch_status(client.status, connect, interval, console)
            return
        info = client.status()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    console.print(status_view(info, f"broker {connect}"))


@main.command()
@click.option("--repo-id", required=True, help="The Space to create or update: ORG/NAME.")
@click.option("--env", default="echo", show_default=True, help="Env the Space serves.")
@click.option("--private", is_flag=True, help="Create the Space private.")
@click.option("--dry-run", is_flag=True, help="Stage the Space folder; upload nothing.")
@click.option("--token", default=None, help="Hub token [default: the huggingface_hub login].")
@click.option("--endpoint", default=None, help="Hub address [default: huggingface_hub's].")
def push(
    repo_id: str, env: str, private: bool, dry_run: bool, token: str | None, endpoint: str | None
) -> None:
    """Publish broker + workers + gateway as a Hugging Face docker Space (gateway on port 7860)."""
    from broker.hub import push_space

    _check_envs((env,), None)
    try:
        where = push_space(
            repo_id, env=env, private=private, dry_run=dry_run, token=token, endpoint=endpoint
        )
    except ModuleNotFoundError as exc:  # the hub extra is not installed: it says so
        raise click.UsageError(str(exc)) from None
    click.echo(f"staged the Space in {where}" if dry_run else f"pushed {where}")


@main.group()
def keys() -> None:
    """Make CURVE keys: the broker's, and one per client or fleet of workers."""


@keys.command("init")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
def keys_init(folder: Path) -> None:
    """Make the broker's keypair and empty allowlists in FOLDER (created, mode 0700)."""
    try:
        public = init_keys(folder)
    except CurveKeyError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"broker keys made in {folder} (public key {public.decode()})")
    click.echo(
        f"next: openenv-broker keys add {folder} --client NAME (or --worker NAME), then"
        f" openenv-broker start --curve-dir {folder}"
    )


@keys.command("add")
@click.argument("folder", type=_FOLDER)
@click.option("--client", "client_name", default=None, help="Admit a client key of this name.")
@click.option(
    "--worker",
    "worker_name",
    default=None,
    help="Admit a worker key of this name (one key may serve a whole fleet of workers).",
)
def keys_add(folder: Path, client_name: str | None, worker_name: str | None) -> None:
    """Make a keypair for a client or worker, admit it, and write the bundle that peer gets: its
    own keys and the broker's public key, never the broker's secret."""
    if (client_name is None) == (worker_name is None):
        raise click.UsageError("name one peer: --client NAME or --worker NAME")
    role, name = (
        (Role.CLIENT, client_name) if client_name is not None else (Role.WORKER, worker_name)
    )
    assert name is not None
    try:
        bundle = add_peer(folder, role, name)
    except CurveKeyError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"admitted {role} key {name!r}: {folder / role.folder / name}.key")
    click.echo(
        f"its bundle: {bundle} (holds its secret key: copy it to the {role} privately, then"
        f" delete it here); use it with --curve-dir {bundle}"
    )


@main.group()
def image() -> None:
    """Build the worker image, locally: no registry or package index past the base image."""


@image.command("build")
@click.option("--tag", default=DEFAULT_IMAGE, show_default=True, help="The image's tag.")
@click.option(
    "--env",
    "envs",
    multiple=True,
    default=("echo",),
    show_default=True,
    help="An env the image hosts: its extra (coding, gym...) is installed. Repeatable.",
)
@click.option(
    "--package",
    "packages",
    multiple=True,
    help="Also install this env package: a folder, a wheel or a requirement. Repeatable.",
)
@click.option(
    "--base-image",
    default=DEFAULT_BASE_IMAGE,
    show_default=True,
    help="The image to build on: a local one where no registry is reachable, with this"
    " Python's version (docker/base-image.sh makes one).",
)
def image_build(
    tag: str, envs: tuple[str, ...], packages: tuple[str, ...], base_image: str
) -> None:
    """Build the worker image for --env ENV... on this host's Docker engine: wheels are built
    here, and the image installs only those, with no network."""
    try:
        image_id = build_worker_image(tag, envs, packages, base_image, say=click.echo)
    except (ProviderUnavailable, FileNotFoundError) as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"built {tag} ({image_id[:19]}), hosting {', '.join(envs)}")


def _print_report(report: BenchReport) -> None:
    table = Table(title="openenv-broker bench")
    columns = ("env", "envs", "workers", "batches", "env-steps/s", "batch p50", "batch p99")
    for column in columns:
        table.add_column(column, justify="right")
    table.add_row(
        report.env,
        f"{report.num_envs:,}",
        str(report.workers),
        f"{report.batches:,}",
        f"{report.env_steps_per_s:,.0f}",
        f"{report.batch_p50_ms:.2f} ms",
        f"{report.batch_p99_ms:.2f} ms",
    )
    console.print(table)


@main.command()
@click.option(
    "--connect",
    callback=_address,
    default=None,
    help="A running broker; without it an embedded one is started.",
)
@click.option("--env", default="echo", show_default=True, help="Env to step.")
@click.option(
    "--num-envs",
    type=_POSITIVE_INT,
    default=1024,
    show_default=True,
    help="Env instances in the batch.",
)
@click.option(
    "--workers",
    type=_POSITIVE_INT,
    default=2,
    show_default=True,
    help="Local workers of the embedded broker.",
)
@click.option(
    "--duration", type=_POSITIVE_FLOAT, default=5.0, show_default=True, help="Seconds to measure."
)
@click.option(
    "--action",
    default='{"message": "hello"}',
    show_default=True,
    help="The action every env gets, as JSON.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_bundle_option(Role.CLIENT)
def bench(
    connect: str | None,
    env: str,
    num_envs: int,
    workers: int,
    duration: float,
    action: str,
    as_json: bool,
    curve: CurveKeys | None,
) -> None:
    """Step a batch of envs for a while; print env-steps/s and batch latency."""
    if curve is not None and connect is None:
        raise click.UsageError("--curve-dir is for a running broker: pass --connect too")
    try:
        action_value: Any = json.loads(action)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--action") from None
    if connect is None:  # the embedded workers would die importing it, and be restarted
        _check_envs((env,), None)
    with _cluster(connect, workers, env, num_envs) as address:
        progress = Progress(
            TextColumn(f"stepping {num_envs:,} {env} envs"),
            BarColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=as_json,
            transient=True,
        )
        with progress:
            task = progress.add_task("bench", total=duration)
            try:
                report = run_bench(
                    address,
                    env,
                    num_envs,
                    duration,
                    action_value,
                    min_workers=1 if connect else workers,
                    on_batch=lambda elapsed: progress.update(task, completed=elapsed),
                    curve=curve,
                )
            except ActionValidationError as exc:
                raise click.BadParameter(
                    f"the {env} env refused it ({exc})", param_hint="'--action'"
                ) from None
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        _print_report(report)


def _cluster(
    connect: str | None, workers: int, env: str, num_envs: int
) -> contextlib.AbstractContextManager[str]:
    """The given broker, or an embedded one sized for ``num_envs`` over ``workers``."""
    if connect is not None:
        return contextlib.nullcontext(connect)
    capacity = max(1, -(-num_envs // max(1, workers)))
    return embedded_cluster(workers, [env], capacity)


def run() -> None:
    """Console entry point: typed errors become a one-line message and exit code 1 (with
    ``--log-level debug``, their traceback too)."""
    try:
        main(standalone_mode=True)
    except OpenEnvZmqError as exc:
        logging.getLogger(__name__).debug("where it was raised", exc_info=exc)
        console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}", soft_wrap=True)
        sys.exit(1)
