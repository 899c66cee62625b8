"""Workers as Ray actors spread over a Ray cluster, replaced when they die.

The broker process is the Ray driver: :meth:`RayProvider.start` connects it to the cluster
(``ray.init``), and each worker is an actor that runs :func:`~openenv_zmq.worker.loop.run_worker`
and connects back to the broker over TCP. Actors are not detached, so they end with the driver
(a broker killed with SIGKILL leaves none behind), and have ``max_restarts=0``: Ray would restart
one under the same actor with the same socket identity, where the broker must see a new worker,
so the provider starts a fresh actor itself, by the restart policy every provider shares
(:mod:`broker.providers.slots`).

The broker calls :meth:`RayProvider.poll` every 50 ms from its routing thread, which must never
block; Ray calls can (scheduling, a GCS round trip), so every one of them is made by the
provider's supervisor thread, and ``poll`` only drains what that thread queued.

Ray is an optional dependency (``pip install 'openenv-zmq[ray]'``): it is imported when a
provider starts, never when this module is.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.providers.slots import WorkerSlot, check_not_all_given_up
from openenv_zmq.errors import ProviderUnavailable, WorkersFailing

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.actor import ActorHandle

log = logging.getLogger(__name__)

RAY_MISSING = "the ray package is not installed: pip install 'openenv-zmq[ray]'"
PREFLIGHT_SECONDS = 20.0
"""The most :func:`ray_preflight` takes when something answers at the address but is slow, or
is not Ray (a connect to a closed port fails at once)."""
PROBE_SECONDS = 3.0
STOP_GRACE_SECONDS = 5.0
"""How long the actors get to send BYE and return after they are asked to stop, before they
are killed."""
SUPERVISE_SECONDS = 0.05
"""How often the supervisor thread looks for ended actors and starts the replacements due."""
UNSCHEDULED_WARNING_SECONDS = 30.0
"""An actor that has not started by then is reported: the cluster lacks the CPUs or memory."""

# Run in a child process by ray_preflight: a driver that connects to an address where no GCS
# answers is not given an error; Ray's own client retries for a minute and then terminates the
# whole process. A child can be killed at a deadline instead, leaving the broker untouched.
_CHECK = """
import sys
import ray
ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
ray.shutdown()
"""


def ray_preflight(address: str | None = "auto", timeout: float = PREFLIGHT_SECONDS) -> str | None:
    """Check that Ray can start workers at ``address`` and return what to pass to ``ray.init``.

    ``address``: ``"auto"`` (``RAY_ADDRESS``, else the cluster ``ray start`` last started on
    this host), a GCS ``host:port``, a Ray Client ``ray://host:port``, or ``"local"``: no
    cluster, the provider starts a Ray instance of its own on this host (only the package is
    checked; ``None``, ``ray.init``'s default, is ``RAY_ADDRESS`` or such an instance).
    Takes at most about ``timeout`` seconds and leaves nothing running. Raises
    :class:`ProviderUnavailable` with one line naming what is missing: the ``ray`` package, a
    cluster at the address.
    """
    if importlib.util.find_spec("ray") is None:
        raise ProviderUnavailable(RAY_MISSING)
    if address is None or address == "local":
        return address
    if address == "auto":
        address = _resolve_auto()
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=min(PROBE_SECONDS, timeout)):
            pass
    except OSError as exc:
        raise ProviderUnavailable(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}): start one with"
            " `ray start --head`, or give the address of its head (host:6379 or ray://host:10001)"
        ) from None
    if not address.startswith("ray://"):
        # A Ray Client server is checked by connecting only: a driver of its own would cost
        # the server a session.
        _check_gcs(address, timeout)
    return address


def _resolve_auto() -> str:
    """``RAY_ADDRESS``, else the address ``ray start`` recorded on this host, as ``ray.init``
    resolves ``"auto"``."""
    from_env = os.environ.get("RAY_ADDRESS")
    if from_env:
        return from_env
    from ray._private.services import canonicalize_bootstrap_address

    try:
        resolved = canonicalize_bootstrap_address("auto")
    except ConnectionError:
        resolved = None
    if resolved is None:
        raise ProviderUnavailable(
            "no Ray cluster runs on this host (address auto): start one with `ray start --head`,"
            " pass the address of a running one (host:6379 or ray://host:10001), or `local`"
            " for a Ray of the broker's own"
        )
    return str(resolved)


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ProviderUnavailable(
            f"{address!r} is no Ray address: use auto, host:port or ray://host:port"
        )
    return host.strip("[]"), int(port)


def _check_gcs(address: str, timeout: float) -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHECK, address],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        hint = "give the address of the head's GCS (host:6379)"
        if _host_port(address)[0] in ("127.0.0.1", "localhost", "::1"):
            # Ray connects to a loopback address through this host's own interface address,
            # where a cluster started with --node-ip-address 127.0.0.1 does not listen.
            hint += "; for a cluster bound to 127.0.0.1, set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
        raise ProviderUnavailable(
            f"something listens at {address} but no Ray cluster answered within {timeout:g} s:"
            f" {hint}"
        ) from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise ProviderUnavailable(
            f"cannot connect to the Ray cluster at {address}: {lines[-1] if lines else 'no reason'}"
        )


class _RayWorker:
    """The actor: one worker. Created with ``max_concurrency=2`` so that :meth:`stop` and
    :meth:`where` are served while :meth:`run` blocks (a plain actor runs one method at a time,
    and :meth:`run` returns only when stopped). Its methods then run on Ray's threads, not the
    process's main thread: ``run_worker`` installs no signal handlers, which are Ray's."""

    def __init__(self) -> None:
        self._stop = threading.Event()

    def where(self) -> tuple[str, str]:
        """The Ray node id and actor id (hex) of this actor."""
        import ray

        context = ray.get_runtime_context()
        return context.get_node_id(), context.get_actor_id() or ""

    def run(self, **worker_kwargs: Any) -> None:
        """Run the worker until :meth:`stop`."""
        import ray

        from openenv_zmq.worker.loop import run_worker

        actor_id = ray.get_runtime_context().get_actor_id()
        run_worker(stop=self._stop, provider="ray", instance=actor_id, **worker_kwargs)

    def stop(self) -> None:
        self._stop.set()


@dataclass(frozen=True)
class RayWorkers:
    """Where and how big the Ray workers are: :class:`RayProvider`'s own arguments."""

    address: str | None = "auto"
    num_cpus: float = 1
    memory_mb: int | None = None
    connect: str | None = None


class RayProvider:
    """Keeps ``count`` workers running as Ray actors, spread over the cluster at ``address``.

    ``address``: see :func:`ray_preflight`; ignored when this process is already connected to
    Ray (``ray.init`` was called, e.g. by a trainer that runs the broker in its own driver).
    ``num_cpus`` (fractions allowed) and ``memory_mb`` are what each actor reserves on its
    node; an actor waits, and a warning is logged, while no node has them free. ``connect``:
    where the workers reach the broker's backend (``--advertise``, ``tcp://HOST:PORT``); by
    default the address :meth:`start` is given, which only actors on the broker's host can
    reach when it is on loopback. ``worker_kwargs`` go to
    :func:`~openenv_zmq.worker.loop.run_worker` (``envs``, ``capacity``, ``heartbeat_interval``,
    ``curve``...). An ended actor (its node removed, its process killed, the worker stopped) is
    replaced by a new one, which the scheduler may put on any node, with the policy of
    :class:`~broker.providers.slots.WorkerSlot`; when every worker has been given up,
    :meth:`poll` raises :class:`WorkersFailing`.
    """

    def __init__(
        self,
        count: int,
        *,
        address: str | None = "auto",
        num_cpus: float = 1,
        memory_mb: int | None = None,
        connect: str | None = None,
        **worker_kwargs: Any,
    ) -> None:
        self.count = count
        self.address = address
        self.num_cpus = num_cpus
        self.memory_mb = memory_mb
        self.connect = connect
        # CURVE keys (``curve``) go to each actor as a method argument, so they pass through
        # Ray's object store and the GCS's task records, which every driver of the cluster can
        # read: a Ray cluster is one trust domain.
        self.worker_kwargs = worker_kwargs
        self._slots = [WorkerSlot(i, "ray") for i in range(count)]
        self._actors: dict[int, ActorHandle[_RayWorker]] = {}
        self._runs: dict[int, ObjectRef[None]] = {}
        self._wheres: dict[int, ObjectRef[tuple[str, str]]] = {}
        self._warned: dict[int, float] = {}
        """When each actor not started yet was last reported as such, by slot index."""
        self._nodes: dict[str, str] = {}
        self._nodes_lock = threading.Lock()
        self._ended: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._to_kill: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._failure: Exception | None = None
        self._halt = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._actor_class: Any = None
        self._connect = ""
        self._owns_ray = False

    @property
    def extra_backend(self) -> str | None:
        return None

    def start(self, connect: str) -> None:
        """Connect to Ray (unless this process already is) and start the supervisor thread,
        which starts the actors. Raises :class:`ProviderUnavailable` as :func:`ray_preflight`
        does."""
        try:
            import ray
        except ImportError:
            raise ProviderUnavailable(RAY_MISSING) from None
        self._connect = self.connect or connect
        if not ray.is_initialized():
            address = ray_preflight(self.address)
            # Ray's core installs a C handler for SIGTERM that logs a stack and ends the process:
            # the broker's own handler (stop the workers, close the sockets) is put back.
            on_sigterm = signal.getsignal(signal.SIGTERM)
            try:
                ray.init(address=address)
            except Exception as exc:  # e.g. ray:// without the client's extra dependencies
                raise ProviderUnavailable(f"cannot connect to Ray at {address}: {exc}") from exc
            finally:
                if threading.current_thread() is threading.main_thread() and on_sigterm is not None:
                    signal.signal(signal.SIGTERM, on_sigterm)
            self._owns_ray = True
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            "max_restarts": 0,
            "max_concurrency": 2,
            "scheduling_strategy": "SPREAD",
        }
        if self.memory_mb is not None:
            options["memory"] = self.memory_mb * 2**20
        self._actor_class = ray.remote(**options)(_RayWorker)
        self._supervisor = threading.Thread(
            target=self._supervise, name="ray-supervisor", daemon=True
        )
        self._supervisor.start()

    def poll(self) -> list[bytes]:
        """Identities of the actors that ended since the last poll. Never blocks: the
        supervisor thread did the Ray calls."""
        if self._failure is not None:
            raise self._failure
        ended = []
        while True:
            try:
                ended.append(self._ended.get_nowait())
            except queue.Empty:
                return ended

    def worker_died(self, identity: bytes) -> None:
        """The broker declared the worker of ``identity`` dead: its actor is killed (by the
        supervisor thread; this returns at once)."""
        self._to_kill.put(identity)

    def nodes(self) -> dict[str, str]:
        """The Ray node id of each running worker's actor, by worker name (once it started)."""
        with self._nodes_lock:
            return dict(self._nodes)

    def stop(self) -> None:
        """Ask every actor to stop (its worker says BYE), kill those still running after
        :data:`STOP_GRACE_SECONDS`, and disconnect from Ray if :meth:`start` connected."""
        self._halt.set()
        if self._supervisor is None:  # never started: nothing of Ray's to release
            for slot in self._slots:
                slot.stopped()
            return
        import ray

        self._supervisor.join()
        try:
            for actor in self._actors.values():
                actor.stop.remote()
            runs = list(self._runs.values())
            if runs:
                ray.wait(runs, num_returns=len(runs), timeout=STOP_GRACE_SECONDS)
            for actor in self._actors.values():
                ray.kill(actor, no_restart=True)
        finally:
            self._actors.clear()
            self._runs.clear()
            self._wheres.clear()
            for slot in self._slots:
                slot.stopped()
            if self._owns_ray:
                ray.shutdown()
                self._owns_ray = False

    # ------------------------------------------------------------- the supervisor thread

    def _supervise(self) -> None:
        first = True
        while not self._halt.is_set():
            try:
                if first:  # a position is only "due" after its worker ended: start them all
                    first = False
                    for slot in self._slots:
                        self._launch(slot, time.monotonic())
                self._supervise_once(time.monotonic())
                check_not_all_given_up(self._slots)
            except WorkersFailing as exc:
                self._failure = exc
                return
            except Exception as exc:
                # Ray itself failed (the cluster is gone): the broker stops with the reason.
                log.exception("the Ray supervisor failed")
                self._failure = ProviderUnavailable(f"Ray failed: {exc}")
                return
            self._halt.wait(SUPERVISE_SECONDS)

    def _supervise_once(self, now: float) -> None:
        import ray

        self._kill_declared_dead()
        runs = {ref: index for index, ref in self._runs.items()}
        if runs:
            ended, _ = ray.wait(list(runs), num_returns=len(runs), timeout=0)
            for ref in ended:
                self._ended_actor(runs[ref], ref, now)
        self._note_started(now)
        for slot in self._slots:
            if slot.due(now):
                self._launch(slot, now)

    def _launch(self, slot: WorkerSlot, now: float) -> None:
        slot.launching(now)
        actor = self._actor_class.remote()
        kwargs = {
            "connect": self._connect,
            "name": slot.name,
            "identity": slot.identity,
            **self.worker_kwargs,
        }
        self._actors[slot.index] = actor
        self._runs[slot.index] = actor.run.remote(**kwargs)
        self._wheres[slot.index] = actor.where.remote()
        log.info("started worker %s as a Ray actor", slot.name)

    def _note_started(self, now: float) -> None:
        import ray

        if not self._wheres:
            return
        refs = {ref: index for index, ref in self._wheres.items()}
        ready, waiting = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        for ref in waiting:
            slot = self._slots[refs[ref]]
            if now - self._warned.get(slot.index, slot.started_at) > UNSCHEDULED_WARNING_SECONDS:
                log.warning(
                    "worker %s has not started in %g s: no Ray node has %g CPU%s free",
                    slot.name,
                    now - slot.started_at,
                    self.num_cpus,
                    "" if self.memory_mb is None else f" and {self.memory_mb} MB",
                )
                self._warned[slot.index] = now
        for ref in ready:
            index = refs[ref]
            slot = self._slots[index]
            del self._wheres[index]
            self._warned.pop(index, None)
            try:
                node, actor_id = ray.get(ref)
            except ray.exceptions.RayError:
                continue  # it died before starting: its run() says how
            log.info("worker %s is actor %s on Ray node %s", slot.name, actor_id, node)
            with self._nodes_lock:
                self._nodes[slot.name] = node

    def _ended_actor(self, index: int, ref: ObjectRef[None], now: float) -> None:
        import ray

        slot = self._slots[index]
        try:
            ray.get(ref)
            how = "stopped"
        except ray.exceptions.RayActorError as exc:
            how = f"ended: its actor died ({type(exc).__name__})"
        except ray.exceptions.RayError as exc:
            # A task error's last line is the exception itself; a message may also be empty.
            how = f"failed: {(str(exc).strip().splitlines() or [type(exc).__name__])[-1]}"
        log.warning("worker %s %s", slot.name, how)
        del self._runs[index], self._actors[index]
        self._wheres.pop(index, None)
        with self._nodes_lock:
            self._nodes.pop(slot.name, None)
        self._ended.put(slot.identity)
        slot.ended(now, how)

    def _kill_declared_dead(self) -> None:
        import ray

        while True:
            try:
                identity = self._to_kill.get_nowait()
            except queue.Empty:
                return
            for slot in self._slots:
                actor = self._actors.get(slot.index)
                if slot.identity == identity and actor is not None:
                    log.warning("killing worker %s: the broker declared it dead", slot.name)
                    ray.kill(actor, no_restart=True)
