"""Workers as Docker containers on this host's engine, through the ``docker`` SDK.

Each container runs ``openenv-broker worker`` from the image and hosts many envs. It has **no
network** (``network_mode=none``): it reaches the broker through one socket file, the broker's
worker socket bound to an ``ipc://`` address in a folder of this run, mounted read-only. So code
an env runs (the coding env's sessions) has no network at all, even past the sandbox, and no
port is opened for the workers. The cost: docker workers live on the broker's host; workers on
other hosts join over TCP as before (``--advertise``).

Also per container: read-only root file system with a tmpfs on ``/tmp``, every capability
dropped and ``no-new-privileges`` (the coding sandbox needs none: seccomp and rlimits are set
by an unprivileged process, and the container stands in for the layers it cannot have: no
network for ``netns``, the pids limit for ``pids-cgroup``), a non-root user (the broker's uid,
or 1000 when the broker runs as root), CPU, memory and pids limits, an init process, and labels
naming the broker that started it. With CURVE the worker's keys are files in a second
read-only mount, never environment variables or arguments.

Containers are watched from a thread of this provider: the broker's routing thread only reads
what it found. A container that exits is removed, reported, and replaced as
:mod:`broker.providers.slots` says. Containers of a broker that died without stopping them
(``kill -9``) are found by label at the next start on this host and removed.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker import procfs
from broker.providers.base import first_line
from broker.providers.slots import WorkerSlot, check_not_all_given_up
from openenv_zmq.curve import CurveKeys, write_bundle
from openenv_zmq.errors import ProviderUnavailable
from openenv_zmq.sandbox.layers import REQUIRED_BY_DEFAULT, Layer
from openenv_zmq.sandbox.setup import SandboxOptions

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "openenv-zmq/worker:latest"
LABEL_BROKER = "openenv-zmq.broker"
"""The id of the provider (one per broker run) that started the container."""
LABEL_HOST = "openenv-zmq.broker-host"
LABEL_PID = "openenv-zmq.broker-pid"
LABEL_PID_START = "openenv-zmq.broker-pid-start"
"""The broker process's start time in clock ticks since boot: with the pid, a process that
cannot have been reused."""
LABEL_BOOT = "openenv-zmq.broker-boot"
LABEL_PID_NS = "openenv-zmq.broker-pid-ns"
"""With the host name and boot, where the pid can be looked up: a broker in a container of its
own has pids this host cannot see."""
LABEL_RUN_DIR = "openenv-zmq.run-dir"
"""The folder of the broker's socket and the workers' keys, removed with its orphans."""
LABEL_SLOT = "openenv-zmq.worker"
SOCKET_MOUNT = "/run/openenv-zmq/broker"
KEYS_MOUNT = "/run/openenv-zmq/keys"
SOCKET_NAME = "workers.sock"
RUN_DIR_PREFIX = "openenv-zmq-docker-"
CONTAINER_UID_AS_ROOT = 1000
"""The user containers run as when the broker runs as root (the image's ``user``)."""
WATCH_SECONDS = 0.25
STOP_GRACE_SECONDS = 5
"""How long a container gets to send BYE and exit after SIGTERM before it is killed."""
ENGINE_TIMEOUT = 30
CONTAINERS_LACK = frozenset({Layer.UID, Layer.NETNS, Layer.PIDS_CGROUP})
"""Sandbox layers a docker worker cannot have: it runs unprivileged, under Docker's default
seccomp profile, with a read-only cgroup file system."""
ENGINE_PATIENCE_SECONDS = 30.0
"""How long the engine may keep failing before the broker stops: its workers cannot be watched
or replaced meanwhile."""
CHECK_TIMEOUT = 60.0
"""How long the check that the image has the envs may take (a container that imports them)."""


@dataclass(frozen=True)
class DockerWorkers:
    """How the worker containers are made."""

    image: str = DEFAULT_IMAGE
    cpus: float | None = 1.0
    """CPUs each container may use (``--cpus``); ``None``: no limit. One, as a Ray actor's: a
    worker steps its envs on one thread; more workers use more CPUs."""
    memory_mb: int | None = 4096
    """Memory each container may use, its page cache included; ``None``: no limit."""
    pids: int = 4096
    """Processes and threads each container may run (the coding env's sessions count)."""
    tmpfs_mb: int = 256
    """Size of the writable ``/tmp`` (the contained sessions' working folders)."""
    runtime: str | None = None
    """The engine's container runtime (``runsc`` for gVisor); ``None``: the engine's default."""


@dataclass
class _Running:
    container: Container
    slot: WorkerSlot


@dataclass
class _Requests:
    """What the routing thread asks the watcher thread to do, and what it found."""

    kill: queue.SimpleQueue[bytes] = field(default_factory=queue.SimpleQueue)
    exited: queue.SimpleQueue[bytes] = field(default_factory=queue.SimpleQueue)
    failure: list[BaseException] = field(default_factory=list)


def docker_client() -> DockerClient:
    """A client of this host's Docker engine, or :class:`ProviderUnavailable` saying what is
    missing: the ``docker`` package, or an engine that answers."""
    try:
        import docker
    except ImportError:
        raise ProviderUnavailable(
            "--provider docker needs the docker package: pip install 'openenv-zmq[docker]'"
        ) from None
    try:
        client = docker.from_env(timeout=ENGINE_TIMEOUT)
        client.ping()
    except docker.errors.DockerException as exc:
        raise ProviderUnavailable(
            f"no Docker engine answers ({first_line(exc)}): start dockerd, or set DOCKER_HOST"
        ) from None
    return client


def check_runtime(client: DockerClient, runtime: str | None) -> None:
    """:class:`ProviderUnavailable` unless the engine knows ``runtime`` (``None``: its default)."""
    known = sorted(client.info().get("Runtimes", {}))
    if runtime is not None and runtime not in known:
        raise ProviderUnavailable(
            f"the Docker engine has no runtime {runtime!r} (it has {', '.join(known)}): install"
            " it and name it in the engine's daemon.json (gVisor: `runsc install`)"
        )


def check_image(
    client: DockerClient, image: str, envs: Sequence[str], runtime: str | None = None
) -> None:
    """:class:`ProviderUnavailable` unless ``image`` is on the engine and imports every env
    (in a container of ``runtime``)."""
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise ProviderUnavailable(
            f"no image {image} on this Docker engine: build it with `openenv-broker image build"
            f" --tag {image}{''.join(f' --env {env}' for env in envs)}`"
        ) from None
    probe = "import sys\nfrom openenv_zmq.registry import resolve_env\nfor env in sys.argv[1:]:\n"
    probe += "    resolve_env(env)\n"
    code, said = run_once(client, image, ["python", "-c", probe, *envs], runtime=runtime)
    if code != 0:
        last = said.splitlines()[-1] if said else "no output"
        raise ProviderUnavailable(
            f"image {image} cannot host {', '.join(envs)} ({last}): rebuild it with"
            f" `openenv-broker image build --tag {image}"
            f"{''.join(f' --env {env}' for env in envs)}`"
        )


def run_once(
    client: DockerClient, image: str, command: Sequence[str], runtime: str | None = None
) -> tuple[int, str]:
    """Run ``command`` in a throwaway container of ``image``, made as the workers' are (no
    network, read-only, no capabilities, labelled), to its end: its exit code and what it
    printed. The container is removed whatever happens; an engine that cannot run it, or a
    command that takes over :data:`CHECK_TIMEOUT`, is :class:`ProviderUnavailable`."""
    import docker
    import requests

    options = _hardened(DockerWorkers(image=image, runtime=runtime, pids=256, tmpfs_mb=64))
    labels = {**_broker_labels(f"probe-{uuid.uuid4().hex[:12]}"), LABEL_SLOT: "probe"}
    try:
        container = client.containers.create(
            image, list(command[1:]), entrypoint=command[0], labels=labels, **options
        )
    except docker.errors.DockerException as exc:
        raise ProviderUnavailable(
            f"cannot make a container of {image}: {first_line(exc)}"
        ) from None
    try:
        container.start()
        outcome = container.wait(timeout=CHECK_TIMEOUT)
        said = container.logs().decode(errors="replace").strip()
    except requests.RequestException:
        raise ProviderUnavailable(
            f"a container of {image} did not finish {command[0]} within {CHECK_TIMEOUT:g} s"
        ) from None
    except docker.errors.DockerException as exc:
        raise ProviderUnavailable(
            f"a container of {image} cannot run {command[0]}: {first_line(exc)}"
        ) from None
    finally:
        _quietly(container.remove, force=True)
    return int(outcome.get("StatusCode", -1)), said


def remove_orphans(client: DockerClient) -> list[str]:
    """Remove the containers of brokers on this host that are gone (killed without stopping
    them), and the folders holding their sockets and keys; the names removed.

    A broker is gone when it ran on this host (same host name) and either in an earlier boot,
    or in this boot and this pid namespace with no process of its pid and start time left. A
    broker in another pid namespace (a container of its own) cannot be looked up here: its
    containers are left alone."""
    removed = []
    here = _broker_labels("")
    for container in client.containers.list(all=True, filters={"label": LABEL_BROKER}):
        labels = container.labels
        if labels.get(LABEL_HOST) != here[LABEL_HOST]:
            continue  # another host's broker, through a shared engine: not ours to judge
        if labels.get(LABEL_BOOT) == here[LABEL_BOOT]:
            if labels.get(LABEL_PID_NS) != here[LABEL_PID_NS]:
                continue
            pid, started = labels.get(LABEL_PID, ""), labels.get(LABEL_PID_START, "")
            if pid.isdigit() and str(procfs.started(int(pid))) == started:
                continue
        _quietly(container.remove, force=True)
        removed.append(str(container.name))
        run_dir = Path(labels.get(LABEL_RUN_DIR, ""))
        if run_dir.name.startswith(RUN_DIR_PREFIX) and run_dir.parent == Path(
            tempfile.gettempdir()
        ):
            shutil.rmtree(run_dir, ignore_errors=True)  # the dead broker's sockets and keys
    if removed:
        log.warning(
            "removed %d worker container(s) left by a broker that is gone: %s",
            len(removed),
            ", ".join(removed),
        )
    return removed


class DockerProvider:
    """Keeps ``count`` worker containers running on this host's Docker engine.

    ``envs``, ``capacity``, ``heartbeat``, ``max_threads``, ``sandbox`` and
    ``max_message_mb`` are the ``worker`` command's options; ``curve`` the keys the workers use
    (the cluster's own, admitted by the broker). Nothing touches the engine before
    :meth:`start`, which raises :class:`ProviderUnavailable` when it cannot start them.
    """

    def __init__(
        self,
        count: int,
        workers: DockerWorkers,
        envs: Sequence[str],
        capacity: int,
        heartbeat: float,
        max_threads: int,
        sandbox: SandboxOptions,
        max_message_mb: float,
        curve: CurveKeys | None = None,
    ) -> None:
        self.workers = workers
        self.id = uuid.uuid4().hex[:12]
        self._args = _worker_args(envs, capacity, heartbeat, max_threads, sandbox, max_message_mb)
        self._envs = list(envs)
        self._curve = curve
        self._slots = [WorkerSlot(i, "docker") for i in range(count)]
        self._running: dict[int, _Running] = {}
        self._requests = _Requests()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._client: DockerClient | None = None
        self._run_dir = Path(tempfile.gettempdir()) / f"{RUN_DIR_PREFIX}{self.id}"
        self._keys_dir: Path | None = None

    @property
    def extra_backend(self) -> str | None:
        # The broker creates the folder (0700) when it binds; start() lends it to the containers.
        return f"ipc://{self._run_dir / 'sockets' / SOCKET_NAME}"

    def start(self, connect: str) -> None:
        import docker

        try:
            self._start()
        except docker.errors.DockerException as exc:
            raise ProviderUnavailable(
                f"the Docker engine cannot start the workers: {first_line(exc)}"
            ) from None

    def _start(self) -> None:
        client = self._client = docker_client()
        remove_orphans(client)
        check_runtime(client, self.workers.runtime)
        check_image(client, self.workers.image, self._envs, self.workers.runtime)
        uid, gid = _container_user()
        sockets = self._run_dir / "sockets"
        # The containers' user must reach the socket: the folder and the file become theirs.
        lent = [sockets, sockets / SOCKET_NAME]
        if self._curve is not None:
            self._keys_dir = Path(tempfile.mkdtemp(prefix="keys-", dir=self._run_dir))
            write_bundle(self._keys_dir, self._curve, {"role": "worker", "name": "docker"})
            lent += [self._keys_dir, *self._keys_dir.iterdir()]
        if os.geteuid() == 0:
            for path in lent:
                os.chown(path, uid, gid)
        for slot in self._slots:
            self._launch(slot)
        self._watcher = threading.Thread(target=self._watch, name="docker-workers", daemon=True)
        self._watcher.start()

    def _launch(self, slot: WorkerSlot) -> None:
        assert self._client is not None
        slot.launching(time.monotonic())
        volumes = {str(self._run_dir / "sockets"): {"bind": SOCKET_MOUNT, "mode": "ro"}}
        command = [
            "worker",
            "--connect",
            f"ipc://{SOCKET_MOUNT}/{SOCKET_NAME}",
            "--name",
            slot.name,
            "--identity",
            slot.identity.decode(),
            "--provider",
            "docker",
            *self._args,
        ]
        if self._keys_dir is not None:
            volumes[str(self._keys_dir)] = {"bind": KEYS_MOUNT, "mode": "ro"}
            command += ["--curve-dir", KEYS_MOUNT]
        try:
            container = self._client.containers.run(
                self.workers.image,
                command,
                name=f"openenv-worker-{self.id}-{slot.name}",
                detach=True,
                labels={**_broker_labels(self.id, self._run_dir), LABEL_SLOT: slot.name},
                volumes=volumes,
                **_hardened(self.workers),
            )
        except BaseException:
            # The position waits for its next try (the watcher retries an engine that fails).
            slot.ended(time.monotonic(), "could not be started")
            raise
        self._running[slot.index] = _Running(container, slot)
        log.info("started worker %s (container %s)", slot.name, container.short_id)

    def _watch(self) -> None:
        import docker
        import requests

        failing_since: float | None = None
        try:
            while not self._stop.wait(WATCH_SECONDS):
                try:
                    self._watch_once()
                    failing_since = None
                except (docker.errors.DockerException, requests.RequestException) as exc:
                    # An engine that restarts or answers slowly is waited for, within reason.
                    now = time.monotonic()
                    if failing_since is None:
                        failing_since = now
                        log.warning("the Docker engine failed (%s); retrying", first_line(exc))
                    elif now - failing_since > ENGINE_PATIENCE_SECONDS:
                        raise
        except BaseException as exc:  # handed to the routing thread, which stops the broker
            self._requests.failure.append(exc)

    def _watch_once(self) -> None:
        assert self._client is not None
        while True:
            try:
                identity = self._requests.kill.get_nowait()
            except queue.Empty:
                break
            for running in self._running.values():
                if running.slot.identity == identity:
                    log.warning("killing worker %s: the broker declared it dead", running.slot.name)
                    _quietly(running.container.kill)
        states = {
            c.id: c
            for c in self._client.containers.list(
                all=True, filters={"label": f"{LABEL_BROKER}={self.id}"}
            )
        }
        now = time.monotonic()
        for index, running in list(self._running.items()):
            current = states.get(running.container.id)
            if current is not None and current.status not in ("exited", "dead"):
                continue
            how = _how_it_ended(current)
            log.warning("worker %s %s", running.slot.name, how)
            _quietly(running.container.remove, force=True)
            del self._running[index]
            running.slot.ended(now, how)
            self._requests.exited.put(running.slot.identity)
        for slot in self._slots:
            if slot.due(now):
                self._launch(slot)

    def poll(self) -> list[bytes]:
        if self._requests.failure:
            exc = self._requests.failure[0]
            raise ProviderUnavailable(
                f"the docker workers can no longer be watched or replaced: {first_line(exc)}"
            ) from exc
        exited = []
        while True:
            try:
                exited.append(self._requests.exited.get_nowait())
            except queue.Empty:
                break
        check_not_all_given_up(self._slots)
        return exited

    def worker_died(self, identity: bytes) -> None:
        self._requests.kill.put(identity)

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        try:
            # SIGTERM to all first, so they stop together: each sends BYE and exits.
            for running in self._running.values():
                _quietly(running.container.kill, signal="SIGTERM")
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            for running in self._running.values():
                _quietly(running.container.wait, timeout=max(1.0, deadline - time.monotonic()))
            if self._client is not None:
                # By label, not only those known: a start that failed half-way leaves some.
                mine = f"{LABEL_BROKER}={self.id}"
                for container in self._client.containers.list(all=True, filters={"label": mine}):
                    _quietly(container.remove, force=True)
        finally:
            self._running.clear()
            for slot in self._slots:
                slot.stopped()
            shutil.rmtree(self._run_dir, ignore_errors=True)
            if self._client is not None:
                self._client.close()


def _worker_args(
    envs: Sequence[str],
    capacity: int,
    heartbeat: float,
    max_threads: int,
    sandbox: SandboxOptions,
    max_message_mb: float,
) -> list[str]:
    """The ``worker`` command's options that say what the broker's own workers would be given."""
    args = [f"--env={env}" for env in envs]
    # The broker stops its containers only when it stops itself: no envs to drain for.
    args += [f"--capacity={capacity}", f"--heartbeat={heartbeat!r}", "--drain-timeout=0"]
    args += [f"--max-threads={max_threads}", f"--max-message-mb={max_message_mb!r}"]
    policy = sandbox.policy
    args += [
        f"--sandbox-require={layer}" for layer in sorted(policy.required - REQUIRED_BY_DEFAULT)
    ]
    args += [
        f"--sandbox-optional={layer}" for layer in sorted(REQUIRED_BY_DEFAULT - policy.required)
    ]
    args += [f"--session-memory={policy.limits.memory_mb}", f"--session-cpu={policy.limits.cpu_s}"]
    if sandbox.unsafe_in_process:
        args.append("--unsafe-in-process-code")
    return args


def _broker_labels(provider_id: str, run_dir: Path | None = None) -> dict[str, str]:
    labels = {
        LABEL_BROKER: provider_id,
        LABEL_HOST: socket.gethostname(),
        LABEL_BOOT: _read("/proc/sys/kernel/random/boot_id"),
        LABEL_PID_NS: _pid_namespace(),
        LABEL_PID: str(os.getpid()),
        LABEL_PID_START: str(procfs.started(os.getpid())),
    }
    if run_dir is not None:
        labels[LABEL_RUN_DIR] = str(run_dir)
    return labels


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _hardened(spec: DockerWorkers) -> dict[str, Any]:
    """``containers.run`` / ``create`` options every container of this provider gets."""
    uid, gid = _container_user()
    return {
        "network_mode": "none",
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={spec.tmpfs_mb}m,mode=1777"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "user": f"{uid}:{gid}",
        "nano_cpus": None if spec.cpus is None else int(spec.cpus * 1e9),
        "mem_limit": None if spec.memory_mb is None else f"{spec.memory_mb}m",
        "pids_limit": spec.pids,
        "init": True,
        "environment": {"HOME": "/tmp"},
        "runtime": spec.runtime,
    }


def _container_user() -> tuple[int, int]:
    """The uid and gid containers run as: the broker's own, never root."""
    uid, gid = os.geteuid(), os.getegid()
    return (CONTAINER_UID_AS_ROOT, CONTAINER_UID_AS_ROOT) if uid == 0 else (uid, gid)


def _how_it_ended(container: Container | None) -> str:
    """How the container ended, with the last line it printed."""
    if container is None:
        return "is gone (removed by someone else)"
    container.reload()  # a listed container's state is only a word
    state: dict[str, Any] = container.attrs.get("State", {})
    how = f"exited with code {state.get('ExitCode')}"
    if state.get("OOMKilled"):
        how += " (out of memory: raise --worker-memory)"
    said = container.logs(tail=1).decode(errors="replace").strip()
    return f"{how}; its last line: {said}" if said else how


def _quietly(call: Callable[..., object], **kwargs: Any) -> None:
    """Call ``call``; a container already gone, or slow to stop, is no error while cleaning
    up."""
    import docker
    import requests

    try:
        call(**kwargs)
    except docker.errors.NotFound:
        pass
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        log.warning("docker: %s", first_line(exc))
