"""Where a worker runs: what it says in READY, what the broker keeps and shows in status."""

from __future__ import annotations

import pytest

from broker.core import BrokerConfig, BrokerCore
from broker.epoch import Epoch
from openenv_zmq.errors import ProtocolError
from openenv_zmq.protocol import Message, Op, decode, encode
from openenv_zmq.protocol.schema import MAX_LABEL_CHARS
from openenv_zmq.worker.origin import INSTANCE_ENV, PROVIDER_ENV, WorkerOrigin, worker_origin
from tests.unit.test_broker_core import CONTROL, W1, to_worker
from tests.unit.test_protocol import control, frames_of


def ready_meta(**origin: str) -> dict[str, object]:
    return {"envs": ["echo"], "capacity": 8, "name": "w", "pid": 7, **origin}


def test_a_worker_started_by_hand_is_remote_on_this_host() -> None:
    assert worker_origin(environ={}, hostname="devbox") == WorkerOrigin("remote", "devbox", None)


def test_arguments_win_over_the_environment() -> None:
    environ = {PROVIDER_ENV: "docker", INSTANCE_ENV: "abc123", "HOSTNAME": "abc"}
    origin = worker_origin("local", "i-1", environ=environ, hostname="h")
    assert origin == WorkerOrigin("local", "h", "i-1")


def test_a_provider_says_so_through_the_environment() -> None:
    environ = {PROVIDER_ENV: "ray", INSTANCE_ENV: "actor-42", "HOSTNAME": "node-1"}
    assert worker_origin(environ=environ, hostname="node-1") == WorkerOrigin(
        "ray", "node-1", "actor-42"
    )


@pytest.mark.parametrize("provider", ["kubernetes", "docker"])
def test_in_a_pod_or_container_hostname_is_the_instance(provider: str) -> None:
    environ = {PROVIDER_ENV: provider, "HOSTNAME": "openenv-worker-7f9c4d5b8-x2k9q"}
    origin = worker_origin(environ=environ, hostname="openenv-worker-7f9c4d5b8-x2k9q")
    assert origin.instance == "openenv-worker-7f9c4d5b8-x2k9q"


def test_hostname_is_no_instance_of_a_plain_process() -> None:
    # bash sets HOSTNAME everywhere: for a worker started by hand it names the host, not an id
    assert worker_origin(environ={"HOSTNAME": "devbox"}, hostname="devbox").instance is None
    assert worker_origin("local", environ={"HOSTNAME": "devbox"}).instance is None


@pytest.mark.parametrize(
    ("provider", "instance", "environ", "named"),
    [
        ("", None, {}, "provider"),
        ("x" * (MAX_LABEL_CHARS + 1), None, {}, "provider"),
        (None, "y" * (MAX_LABEL_CHARS + 1), {}, "instance"),
        (None, None, {INSTANCE_ENV: "z" * (MAX_LABEL_CHARS + 1)}, INSTANCE_ENV),
        (None, None, {PROVIDER_ENV: "p" * (MAX_LABEL_CHARS + 1)}, PROVIDER_ENV),
    ],
)
def test_labels_too_long_to_send_are_refused_by_name(
    provider: str | None, instance: str | None, environ: dict[str, str], named: str
) -> None:
    with pytest.raises(ValueError, match=f"^{named} must be 1 to {MAX_LABEL_CHARS} characters"):
        worker_origin(provider, instance, environ=environ, hostname="h")


def test_a_host_name_too_long_is_cut_not_refused() -> None:
    assert worker_origin(environ={}, hostname="h" * 300).host == "h" * MAX_LABEL_CHARS


def test_only_known_fields_go_into_ready() -> None:
    assert WorkerOrigin("remote", "h").meta() == {"provider": "remote", "host": "h"}
    assert WorkerOrigin("k", None, "i").meta() == {"provider": "k", "instance": "i"}


def test_ready_carries_the_origin_and_refuses_a_label_too_long() -> None:
    meta = ready_meta(provider="kubernetes", host="node-1", instance="p" * MAX_LABEL_CHARS)
    assert decode(encode(Message(Op.READY, meta=meta))).meta == meta
    for key in ("provider", "host", "instance"):
        for value in ("", "v" * (MAX_LABEL_CHARS + 1), 7):
            bad = ready_meta(**{key: value})  # type: ignore[arg-type]
            with pytest.raises(ProtocolError, match=f"meta field '{key}' of READY"):
                decode(frames_of(control(Op.READY, **bad)))


def test_status_rows_show_provider_host_instance_and_age() -> None:
    core = BrokerCore(BrokerConfig(epoch=Epoch(0, 1)))
    meta = ready_meta(provider="docker", host="c0ffee", instance="c0ffee1234")
    core.on_worker(W1, [CONTROL, *encode(Message(Op.READY, meta=meta))], 10.0)
    core.on_worker(W1, [CONTROL, *encode(Message(Op.HEARTBEAT))], 70.0)
    [row] = core.status(now=72.5)["workers"]
    assert (row["provider"], row["host"], row["instance"]) == ("docker", "c0ffee", "c0ffee1234")
    assert row["age_s"] == 62.5
    assert row["last_seen_ago"] == 2.5


def test_a_worker_with_a_label_too_long_is_not_registered() -> None:
    core = BrokerCore(BrokerConfig(epoch=Epoch(0, 1)))
    meta = ready_meta(instance="i" * (MAX_LABEL_CHARS + 1))
    [refusal] = core.on_worker(W1, [CONTROL, *frames_of(control(Op.READY, **meta))], 0.0)
    error = to_worker(refusal, W1)
    assert error.op is Op.ERROR and "'instance' of READY" in error.meta["message"]
    assert core.status()["workers"] == []
