"""The restart policy every provider shares, and what a docker worker is told: pure, no engine."""

from __future__ import annotations

import pytest

from broker.cli import _sandbox, worker
from broker.providers.docker import _worker_args
from broker.providers.slots import (
    MAX_QUICK_DEATHS,
    MAX_RESTART_DELAY,
    SHORT_LIFE_SECONDS,
    WorkerSlot,
    check_not_all_given_up,
)
from openenv_zmq.errors import WorkersFailing
from openenv_zmq.sandbox.layers import Layer, SandboxPolicy, SessionLimits
from openenv_zmq.sandbox.setup import SandboxOptions


def test_each_launch_gets_a_new_name_and_an_unguessable_identity() -> None:
    slot = WorkerSlot(3, "docker")
    slot.launching(0.0)
    first = (slot.name, slot.identity)
    slot.ended(100.0, "exited with code 1")
    slot.launching(100.0)
    assert first[0] == "docker-3" and slot.name == "docker-3.1"
    assert slot.identity != first[1] and slot.identity.startswith(b"docker-3.1-")
    assert len(slot.identity) > len(b"docker-3.1-") + 16


def test_a_worker_that_lived_is_replaced_at_once() -> None:
    slot = WorkerSlot(0, "local")
    slot.launching(0.0)
    slot.ended(SHORT_LIFE_SECONDS + 1, "exited with code 0")
    assert slot.due(SHORT_LIFE_SECONDS + 1) and slot.quick_deaths == 0


def test_quick_deaths_back_off_then_give_up() -> None:
    slot, now, delays = WorkerSlot(0, "ray"), 0.0, []
    for _ in range(MAX_QUICK_DEATHS - 1):
        slot.launching(now)
        now += 0.1
        slot.ended(now, "exited with code 1")
        assert slot.restart_at is not None and not slot.due(now)
        delays.append(slot.restart_at - now)
        now = slot.restart_at
        assert slot.due(now)
    assert delays == sorted(delays) and delays[0] == 0.5 and max(delays) <= MAX_RESTART_DELAY
    slot.launching(now)
    slot.ended(now + 0.1, "exited with code 1")
    assert not slot.due(now + 1000) and slot.given_up == "ray-0.4 exited with code 1"
    with pytest.raises(WorkersFailing, match="every ray worker died"):
        check_not_all_given_up([slot])
    check_not_all_given_up([slot, WorkerSlot(1, "ray")])  # one still going: no error


def test_a_stopped_slot_is_not_started_again() -> None:
    slot = WorkerSlot(0, "local")
    slot.launching(0.0)
    slot.stopped()
    assert not slot.due(1000.0)


@pytest.mark.parametrize(
    "sandbox",
    [
        SandboxOptions(),
        SandboxOptions(
            policy=SandboxPolicy(limits=SessionLimits(memory_mb=256, cpu_s=30)).adjusted(
                require=[Layer.NETNS], lower=[Layer.SECCOMP]
            )
        ),
        SandboxOptions(unsafe_in_process=True),
    ],
)
def test_a_docker_worker_is_told_the_brokers_sandbox_options(sandbox: SandboxOptions) -> None:
    args = _worker_args(["echo", "coding"], 512, 0.5, 8, sandbox, 64.0)
    params = worker.make_context("worker", ["--connect", "ipc:///x.sock", *args]).params
    assert params["envs"] == ("echo", "coding") and params["capacity"] == 512
    assert params["heartbeat"] == 0.5 and params["max_threads"] == 8
    assert params["max_message_mb"] == 64.0 and params["drain_timeout"] == 0
    flags = {k: params[k] for k in params if k.startswith(("sandbox_", "session_", "unsafe"))}
    assert _sandbox(("echo",), probe=False, **flags) == sandbox
