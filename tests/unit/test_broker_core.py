"""BrokerCore driven with fake identities, a fake clock and real protocol messages."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core import (
    BROKER_ROUTE,
    BrokerConfig,
    BrokerCore,
    Output,
    ToClient,
    ToWorker,
    WorkerDied,
    WorkerJoined,
)
from broker.epoch import ID_LIMIT, Epoch
from broker.workers import DEAD_WORKERS_KEPT
from openenv_zmq.protocol import (
    PROTOCOL_VERSION,
    Frame,
    Limits,
    Message,
    Op,
    decode,
    encode,
    pack,
)

CLIENT = b"client-a"
CLIENT_B = b"client-b"
W1 = b"worker-1"
W2 = b"worker-2"
CONTROL = b""
EPOCH = Epoch(first_env_id=0, first_worker_id=1)
"""The numbering these tests spell out: env ids from 0, worker ids from 1."""


# ---------------------------------------------------------------- helpers


def ids(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def ready(
    name: str,
    envs: Sequence[str] = ("echo",),
    capacity: int = 8,
    registration: int | None = None,
) -> list[Frame]:
    meta: dict[str, Any] = {"envs": list(envs), "capacity": capacity, "name": name, "pid": 1000}
    if registration is not None:
        meta["registration"] = registration
    return [CONTROL, *encode(Message(Op.READY, meta=meta))]


def control(op: Op) -> list[Frame]:
    return [CONTROL, *encode(Message(op))]


def register(
    core: BrokerCore,
    identity: bytes,
    now: float = 0.0,
    envs: Sequence[str] = ("echo",),
    capacity: int = 8,
) -> int:
    outputs = core.on_worker(identity, ready(identity.decode(), envs, capacity), now)
    welcome = to_worker(outputs[0], identity)
    assert welcome.op is Op.WELCOME
    worker_id: int = welcome.meta["worker"]
    assert outputs[1:] == [WorkerJoined(worker_id, identity.decode())]
    return worker_id


def to_client(output: Output, client: bytes = CLIENT) -> Message:
    assert isinstance(output, ToClient)
    assert output.client == client
    return decode(output.frames)


def to_worker(output: Output, identity: bytes, route: bytes = CONTROL) -> Message:
    assert isinstance(output, ToWorker)
    assert output.identity == identity
    assert output.frames[0] == route
    return decode(output.frames[1:])


def assert_error(message: Message, type_name: str, request_id: int, *text: str) -> None:
    assert message.op is Op.ERROR
    assert message.meta["type"] == type_name, message.meta
    assert message.request_id == request_id
    for fragment in text:
        assert fragment in message.meta["message"]


def hello(
    core: BrokerCore, client: bytes = CLIENT, now: float = 0.0, key: str | None = None
) -> bytes:
    """A new client session of ``client`` (of CURVE public key ``key``): its token."""
    [output] = core.on_client(client, encode(Message(Op.HELLO, 1)), now, key=key)
    answer = to_client(output, client)
    assert answer.op is Op.REPLY, answer.meta
    token: bytes = answer.meta["session"]
    return token


def request(
    op: Op,
    worker: int,
    env_ids: Sequence[int],
    request_id: int,
    session: bytes,
    group: int | None,
    **parts: Any,
) -> list[Frame]:
    message = Message(
        op,
        request_id,
        worker=worker,
        env_ids=ids(*env_ids),
        parts=parts,
        session=session,
        group=group,
    )
    return encode(message)


def step(
    worker: int, env_ids: Sequence[int], request_id: int, session: bytes, group: int | None
) -> list[Frame]:
    actions = [{"message": f"hi {i}"} for i in env_ids]
    return request(Op.STEP, worker, env_ids, request_id, session, group, actions=actions)


def reply(client: bytes, request_id: int, env_ids: Sequence[int]) -> list[Frame]:
    rewards = np.zeros(len(env_ids), dtype=np.float32)
    return [
        client,
        *encode(Message(Op.REPLY, request_id, env_ids=ids(*env_ids), parts={"rew": rewards})),
    ]


def alloc(
    core: BrokerCore,
    session: bytes,
    num_envs: int,
    env: str = "echo",
    request_id: int = 1,
    env_ids: Sequence[int] | None = None,
    now: float = 0.0,
    group: int | None = None,
    client: bytes = CLIENT,
    key: str | None = None,
) -> Message:
    """The answer to an ALLOC of ``session``: a new group, or with ``env_ids`` (and the
    ``group`` they belong to) the re-placement of lost envs."""
    message = Message(
        Op.ALLOC,
        request_id,
        env_ids=None if env_ids is None else ids(*env_ids),
        meta={"env": env, "num_envs": num_envs},
        session=session,
        group=group,
    )
    [output] = core.on_client(client, encode(message), now, key=key)
    return to_client(output, client)


def placed(answer: Message) -> dict[int, int]:
    assert answer.op is Op.REPLY, answer.meta
    assert answer.env_ids is not None
    return dict(zip(answer.env_ids.tolist(), answer.parts["workers"].tolist(), strict=True))


def on(answer: Message, worker: int) -> list[int]:
    """The env ids the ALLOC ``answer`` placed on ``worker``, in order."""
    return [env_id for env_id, placed_on in placed(answer).items() if placed_on == worker]


def counts(answer: Message) -> dict[int, int]:
    result: dict[int, int] = {}
    for worker in placed(answer).values():
        result[worker] = result.get(worker, 0) + 1
    return result


def config(**fields: Any) -> BrokerConfig:
    return BrokerConfig(epoch=EPOCH, **fields)


def worker_status(core: BrokerCore, worker_id: int) -> dict[str, Any]:
    entries: list[dict[str, Any]] = core.status()["workers"]
    [entry] = [w for w in entries if w["id"] == worker_id]
    return entry


@pytest.fixture
def core() -> BrokerCore:
    return BrokerCore(config(heartbeat_interval=1.0, liveness=2.5))


@pytest.fixture
def two_workers(core: BrokerCore) -> tuple[int, int]:
    return register(core, W1), register(core, W2)


# ---------------------------------------------------------------- registration


def test_ready_is_welcomed_with_a_fresh_worker_id(core: BrokerCore) -> None:
    outputs = core.on_worker(W1, ready("worker-1"), 0.0)
    welcome = to_worker(outputs[0], W1)
    assert welcome.meta == {"worker": 1, "heartbeat": 1.0}
    assert outputs[1] == WorkerJoined(1, "worker-1")
    assert register(core, W2) == 2


def test_worker_ids_are_never_reused(core: BrokerCore) -> None:
    first = register(core, W1)
    [died] = core.on_worker(W1, control(Op.BYE), 1.0)
    assert died == WorkerDied(first, "worker-1", "left", W1)
    assert register(core, W1, now=2.0) == first + 1


def test_ready_again_ends_the_old_registration(core: BrokerCore) -> None:
    old = register(core, W1)
    token = hello(core)
    envs = alloc(core, token, 1)
    assert counts(envs) == {old: 1}
    [forwarded] = core.on_client(CLIENT, step(old, [0], 5, token, envs.group), 0.0)
    assert isinstance(forwarded, ToWorker)
    outputs = core.on_worker(W1, ready("worker-1"), 1.0)
    assert_error(to_client(outputs[0]), "WorkerLost", 5)
    assert outputs[1] == WorkerDied(old, "worker-1", "registered again", W1)
    assert to_worker(outputs[2], W1).meta["worker"] == old + 1
    assert outputs[3] == WorkerJoined(old + 1, "worker-1")


def test_a_ready_resent_for_the_same_registration_is_welcomed_again(core: BrokerCore) -> None:
    # READYs the worker re-sent before its WELCOME came (queued while its link was down):
    # one registration, not one each, and the envs placed on it in between stay there.
    [welcome, joined] = core.on_worker(W1, ready("worker-1", registration=2), 0.0)
    first = to_worker(welcome, W1).meta
    assert first == {"worker": 1, "heartbeat": 1.0, "registration": 2}
    assert joined == WorkerJoined(1, "worker-1")
    envs = alloc(core, hello(core), 2)
    for registration in (2, 1):  # the same one, or an earlier one still queued
        [again] = core.on_worker(W1, ready("worker-1", registration=registration), 0.5)
        assert to_worker(again, W1).meta == first
    assert counts(envs) == {1: 2}
    [worker] = core.status(1.0)["workers"]
    assert (worker["id"], worker["state"], worker["used"]) == (1, "READY", 2)
    assert worker["last_seen_ago"] == 0.5  # a READY is a sign of life too


def test_a_ready_of_the_next_registration_ends_the_old_one(core: BrokerCore) -> None:
    register(core, W1)
    core.on_worker(W1, ready("worker-1", registration=0), 0.0)  # no number before: a new one
    [died, welcome, joined] = core.on_worker(W1, ready("worker-1", registration=1), 1.0)
    assert died == WorkerDied(2, "worker-1", "registered again", W1)
    assert to_worker(welcome, W1).meta == {"worker": 3, "heartbeat": 1.0, "registration": 1}
    assert joined == WorkerJoined(3, "worker-1")


def test_unregistered_worker_is_told_to_register(core: BrokerCore) -> None:
    [output] = core.on_worker(W1, control(Op.HEARTBEAT), 0.0)
    assert to_worker(output, W1).op is Op.DISCONNECT
    [output] = core.on_worker(W1, reply(CLIENT, 3, [0]), 0.0)
    assert to_worker(output, W1).op is Op.DISCONNECT


# ---------------------------------------------------------------- allocation


def test_alloc_spreads_envs_evenly(core: BrokerCore, two_workers: tuple[int, int]) -> None:
    token = hello(core)
    first = alloc(core, token, 6)
    assert first.env_ids is not None
    assert first.env_ids.tolist() == [0, 1, 2, 3, 4, 5]
    assert first.group == 0
    assert first.parts["workers"].dtype == np.int64
    assert counts(first) == {two_workers[0]: 3, two_workers[1]: 3}
    second = alloc(core, token, 5, request_id=2)
    assert second.request_id == 2
    assert second.env_ids is not None
    assert second.env_ids.tolist() == [6, 7, 8, 9, 10]
    assert second.group == 6
    assert sorted(counts(second).values()) == [2, 3]
    assert core.status()["env_slots"] == {"used": 11, "free": 5}


def test_alloc_fills_the_least_loaded_worker_first(core: BrokerCore) -> None:
    w1 = register(core, W1)
    token = hello(core)
    assert counts(alloc(core, token, 4)) == {w1: 4}
    w2 = register(core, W2)
    assert counts(alloc(core, token, 6, request_id=2)) == {w1: 1, w2: 5}


def test_alloc_respects_capacity_of_unequal_workers(core: BrokerCore) -> None:
    small = register(core, W1, capacity=2)
    big = register(core, W2, capacity=100)
    assert counts(alloc(core, hello(core), 10)) == {small: 2, big: 8}


def test_alloc_only_uses_workers_hosting_the_env(core: BrokerCore) -> None:
    register(core, W1, envs=["coding"])
    echo = register(core, W2, envs=["echo", "other"])
    assert counts(alloc(core, hello(core), 3)) == {echo: 3}


def test_alloc_of_an_env_nobody_hosts(core: BrokerCore, two_workers: tuple[int, int]) -> None:
    answer = alloc(core, hello(core), 1, env="chess", request_id=4)
    assert_error(answer, "NoWorkerAvailable", 4, "no live worker hosts env 'chess'", "echo")


def test_alloc_with_no_worker_at_all(core: BrokerCore) -> None:
    assert_error(alloc(core, hello(core), 1), "NoWorkerAvailable", 1, "'echo'", "no worker is live")


def test_alloc_beyond_capacity_reserves_nothing(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    token = hello(core)
    assert_error(alloc(core, token, 17), "NoWorkerAvailable", 1, "17", "16 free")
    assert core.status()["env_slots"] == {"used": 0, "free": 16}
    assert alloc(core, token, 16).op is Op.REPLY


# ---------------------------------------------------------------- forwarding and answers


def test_forwarded_request_is_the_same_frames(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    token = hello(core)
    envs = alloc(core, token, 6)
    assert on(envs, two_workers[1]) == [3, 4, 5]
    frames = step(two_workers[1], [3, 4], 9, token, envs.group)
    [output] = core.on_client(CLIENT, frames, 0.0)
    assert isinstance(output, ToWorker)
    assert output.identity == W2
    assert output.frames[0] == CLIENT
    assert len(output.frames) == len(frames) + 1
    assert all(sent is original for sent, original in zip(output.frames[1:], frames, strict=True))


def test_answer_goes_back_to_its_client_untouched(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    w1 = two_workers[0]
    token, token_b = hello(core), hello(core, CLIENT_B)
    envs, envs_b = alloc(core, token, 4), alloc(core, token_b, 4, client=CLIENT_B)
    assert on(envs, w1) == [0, 1]
    [mine_b, *_] = on(envs_b, w1)
    core.on_client(CLIENT, step(w1, [0, 1], 1, token, envs.group), 0.0)
    core.on_client(CLIENT_B, step(w1, [mine_b], 1, token_b, envs_b.group), 0.0)
    assert core.status()["in_flight"] == 2
    assert core.status()["clients"] == 2
    answer = reply(CLIENT_B, 1, [mine_b])
    [output] = core.on_worker(W1, answer, 0.5)
    assert isinstance(output, ToClient)
    assert output.client == CLIENT_B
    assert all(a is b for a, b in zip(output.frames, answer[1:], strict=True))
    assert core.status()["in_flight"] == 1
    assert core.status()["clients"] == 1


def test_duplicate_and_late_answers_are_dropped(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    w1 = two_workers[0]
    token = hello(core)
    envs = alloc(core, token, 2)
    assert on(envs, w1) == [0]
    core.on_client(CLIENT, step(w1, [0], 1, token, envs.group), 0.0)
    assert len(core.on_worker(W1, reply(CLIENT, 1, [0]), 0.1)) == 1
    assert core.on_worker(W1, reply(CLIENT, 1, [0]), 0.2) == []
    assert core.on_worker(W1, reply(CLIENT, 77, [0]), 0.2) == []


def test_answer_from_the_wrong_worker_is_dropped(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    token = hello(core)
    envs = alloc(core, token, 2)
    assert on(envs, two_workers[0]) == [0]
    core.on_client(CLIENT, step(two_workers[0], [0], 1, token, envs.group), 0.0)
    assert core.on_worker(W2, reply(CLIENT, 1, [0]), 0.1) == []
    assert core.status()["in_flight"] == 1
    assert len(core.on_worker(W1, reply(CLIENT, 1, [0]), 0.1)) == 1


def test_duplicate_request_id_in_flight_is_refused(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    w1, w2 = two_workers
    token, token_b = hello(core), hello(core, CLIENT_B)
    envs, envs_b = alloc(core, token, 2), alloc(core, token_b, 2, client=CLIENT_B)
    assert (on(envs, w1), on(envs, w2)) == ([0], [1])
    core.on_client(CLIENT, step(w1, [0], 1, token, envs.group), 0.0)
    [output] = core.on_client(CLIENT, step(w2, [1], 1, token, envs.group), 0.0)
    assert_error(to_client(output), "ProtocolError", 1, "already in flight")
    # The same id from another client is a different request.
    [output] = core.on_client(CLIENT_B, step(w2, on(envs_b, w2), 1, token_b, envs_b.group), 0.0)
    assert isinstance(output, ToWorker)


def test_too_many_in_flight() -> None:
    core = BrokerCore(config(max_in_flight_per_client=2))
    w1 = register(core, W1)
    token, token_b = hello(core), hello(core, CLIENT_B)
    group = alloc(core, token, 1).group
    group_b = alloc(core, token_b, 1, client=CLIENT_B).group
    assert (group, group_b) == (0, 1)
    for request_id in (1, 2):
        [output] = core.on_client(CLIENT, step(w1, [0], request_id, token, group), 0.0)
        assert isinstance(output, ToWorker)
    [output] = core.on_client(CLIENT, step(w1, [0], 3, token, group), 0.0)
    assert_error(to_client(output), "TooManyInFlight", 3, "limit 2")
    [output] = core.on_client(CLIENT_B, step(w1, [1], 3, token_b, group_b), 0.0)
    assert isinstance(output, ToWorker)
    core.on_worker(W1, reply(CLIENT, 1, [0]), 0.1)
    assert isinstance(core.on_client(CLIENT, step(w1, [0], 3, token, group), 0.1)[0], ToWorker)


def test_request_to_a_worker_that_never_existed(core: BrokerCore) -> None:
    # The env ids are in a group of the session; only the worker id is wrong.
    register(core, W1)
    token = hello(core)
    envs = alloc(core, token, 7)
    [output] = core.on_client(CLIENT, step(9, [5, 6], 2, token, envs.group), 0.0)
    answer = to_client(output)
    assert_error(answer, "EnvNotOnWorker", 2, "no worker 9")
    assert answer.env_ids is not None
    assert answer.env_ids.tolist() == [5, 6]
    assert core.status()["in_flight"] == 0


def test_steps_served_counts_env_steps(core: BrokerCore, two_workers: tuple[int, int]) -> None:
    w1 = two_workers[0]
    token = hello(core)
    envs = alloc(core, token, 6)
    assert on(envs, w1) == [0, 1, 2]
    core.on_client(CLIENT, step(w1, [0, 1, 2], 1, token, envs.group), 0.0)
    core.on_client(CLIENT, step(w1, [0, 1], 2, token, envs.group), 0.0)
    core.on_client(CLIENT, request(Op.STATE, w1, [0], 3, token, envs.group), 0.0)
    assert worker_status(core, w1)["steps_served"] == 5


# ---------------------------------------------------------------- liveness


def test_heartbeats_are_sent_every_interval(core: BrokerCore) -> None:
    register(core, W1, now=10.0)
    # A fresh core's first session sweep is due at once (at clock 0): tick it first.
    assert core.on_tick(10.0) == []
    assert core.next_timeout(10.0) == pytest.approx(1.0)
    assert core.on_tick(10.5) == []
    [beat] = core.on_tick(11.0)
    assert to_worker(beat, W1).op is Op.HEARTBEAT
    assert core.on_tick(11.5) == []
    assert core.next_timeout(11.5) == pytest.approx(0.5)
    core.on_worker(W1, control(Op.HEARTBEAT), 11.6)
    [beat] = core.on_tick(12.0)
    assert to_worker(beat, W1).op is Op.HEARTBEAT


def test_next_timeout_without_workers_is_one_interval(core: BrokerCore) -> None:
    # A fresh core's first session sweep is due at once (at clock 0): tick it first.
    assert core.on_tick(3.0) == []
    assert core.next_timeout(3.0) == pytest.approx(1.0)
    assert core.next_timeout(3.5) == pytest.approx(0.5)


def test_silent_worker_dies_after_liveness_intervals_and_not_before(core: BrokerCore) -> None:
    w1 = register(core, W1, now=0.0)
    for now in (1.0, 2.0, 2.5):
        assert not any(isinstance(o, WorkerDied) for o in core.on_tick(now))
    assert core.next_timeout(2.5) == 0.0
    outputs = core.on_tick(2.51)
    [died] = [o for o in outputs if isinstance(o, WorkerDied)]
    assert died.worker_id == w1
    assert "silent" in died.reason
    assert core.on_tick(10.0) == []


def test_any_message_from_a_worker_keeps_it_alive(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    token = hello(core)
    envs = alloc(core, token, 2)
    assert on(envs, two_workers[0]) == [0]
    [forwarded] = core.on_client(CLIENT, step(two_workers[0], [0], 1, token, envs.group), 0.0)
    assert isinstance(forwarded, ToWorker)
    core.on_worker(W1, control(Op.HEARTBEAT), 2.0)
    assert len(core.on_worker(W1, reply(CLIENT, 1, [0]), 4.0)) == 1
    outputs = core.on_tick(6.0)
    assert [o.worker_id for o in outputs if isinstance(o, WorkerDied)] == [two_workers[1]]
    assert worker_status(core, two_workers[0])["state"] == "READY"


def test_death_answers_each_request_in_flight_once_with_its_env_ids(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    w1, w2 = two_workers
    token, token_b = hello(core), hello(core, CLIENT_B)
    envs, envs_b = alloc(core, token, 6), alloc(core, token_b, 2, client=CLIENT_B)
    assert (on(envs, w1), on(envs, w2)) == ([0, 1, 2], [3, 4, 5])
    assert (on(envs_b, w1), on(envs_b, w2)) == ([6], [7])
    group, group_b = envs.group, envs_b.group
    core.on_client(CLIENT, step(w1, [0, 1], 1, token, group), 0.0)
    core.on_client(CLIENT, request(Op.RESET, w1, [2], 2, token, group), 0.0)
    core.on_client(CLIENT_B, step(w1, [6], 1, token_b, group_b), 0.0)
    core.on_client(CLIENT, step(w2, [4], 3, token, group), 0.0)
    assert core.status()["in_flight"] == 4
    core.on_worker(W2, control(Op.HEARTBEAT), 2.0)
    outputs = core.on_tick(2.6)
    errors = {
        (o.client, m.request_id): m
        for o in outputs
        if isinstance(o, ToClient)
        for m in [decode(o.frames)]
    }
    assert set(errors) == {(CLIENT, 1), (CLIENT, 2), (CLIENT_B, 1)}
    for (_, request_id), message in errors.items():
        assert_error(message, "WorkerLost", request_id, f"worker {w1}")
    assert errors[CLIENT, 1].env_ids.tolist() == [0, 1]  # type: ignore[union-attr]
    assert errors[CLIENT, 2].env_ids.tolist() == [2]  # type: ignore[union-attr]
    assert errors[CLIENT_B, 1].env_ids.tolist() == [6]  # type: ignore[union-attr]
    assert sum(isinstance(o, WorkerDied) for o in outputs) == 1
    assert core.status()["in_flight"] == 1
    # The dead worker's late answer is not forwarded: it is told to register again.
    [output] = core.on_worker(W1, reply(CLIENT, 1, [0, 1]), 2.7)
    assert to_worker(output, W1).op is Op.DISCONNECT
    assert not [o for o in core.on_tick(3.0) if isinstance(o, ToClient)]


def test_requests_for_envs_of_a_dead_worker_get_session_lost(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    w1 = two_workers[0]
    token = hello(core)
    envs = alloc(core, token, 4)
    assert counts(envs)[w1] == 2
    lost = on(envs, w1)
    core.on_worker(W1, control(Op.BYE), 1.0)
    [output] = core.on_client(CLIENT, step(w1, lost, 8, token, envs.group), 1.5)
    answer = to_client(output)
    assert_error(answer, "SessionLost", 8, f"worker {w1}", "left", "reset()")
    assert answer.env_ids is not None
    assert answer.env_ids.tolist() == lost
    assert worker_status(core, w1)["state"] == "DEAD"
    assert worker_status(core, w1)["free"] == 0


def test_worker_exited_declares_it_dead_at_once(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    token = hello(core)
    envs = alloc(core, token, 2)
    [forwarded] = core.on_client(
        CLIENT, step(two_workers[0], on(envs, two_workers[0]), 1, token, envs.group), 0.0
    )
    assert isinstance(forwarded, ToWorker)
    outputs = core.worker_exited(W1, 0.1)
    assert_error(to_client(outputs[0]), "WorkerLost", 1)
    assert outputs[1] == WorkerDied(two_workers[0], "worker-1", "its process exited", W1)
    assert core.worker_exited(W1, 0.2) == []
    assert core.worker_exited(b"nobody", 0.2) == []


def test_undeliverable_request_is_answered_with_worker_lost(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    token = hello(core)
    envs = alloc(core, token, 4)
    assert on(envs, two_workers[0]) == [0, 1]
    [forwarded] = core.on_client(CLIENT, step(two_workers[0], [0, 1], 4, token, envs.group), 0.0)
    assert isinstance(forwarded, ToWorker)
    [output] = core.undeliverable(forwarded, 0.1)
    answer = to_client(output)
    assert_error(answer, "WorkerLost", 4, "unreachable")
    assert answer.env_ids is not None
    assert answer.env_ids.tolist() == [0, 1]
    assert core.status()["in_flight"] == 0
    assert core.on_worker(W1, reply(CLIENT, 4, [0, 1]), 0.2) == []
    # A lost control message fails nothing: silence decides.
    beat = core.on_tick(1.0)[0]
    assert isinstance(beat, ToWorker)
    assert core.undeliverable(beat, 1.0) == []


def test_a_worker_whose_connection_is_gone_is_dead_at_once_and_its_envs_move(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    # Before: only the request failed; reset(env_ids=lost) was refused ("env id 0 is live on
    # worker 1") until the worker's silence ran out (3 heartbeat intervals).
    w1, w2 = two_workers
    token = hello(core)
    envs = alloc(core, token, 4)
    lost, group = on(envs, w1), envs.group
    [forwarded] = core.on_client(CLIENT, step(w1, lost, 4, token, group), 0.1)
    assert isinstance(forwarded, ToWorker)
    answer, died = core.undeliverable(forwarded, 0.2, gone=True)
    assert_error(to_client(answer), "WorkerLost", 4, "connection is gone")
    assert died == WorkerDied(w1, "worker-1", "its connection is gone", W1)
    assert worker_status(core, w1)["state"] == "DEAD"
    [output] = core.on_client(CLIENT, step(w1, lost, 5, token, group), 0.3)
    assert_error(to_client(output), "SessionLost", 5)
    moved = alloc(core, token, len(lost), env_ids=lost, request_id=6, group=group)
    assert placed(moved) == dict.fromkeys(lost, w2)


# ---------------------------------------------------------------- re-placement and close


def test_alloc_with_ids_moves_lost_envs_to_live_workers(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    w1, w2 = two_workers
    token = hello(core)
    envs = alloc(core, token, 6)
    lost = on(envs, w1)
    assert len(lost) == 3
    core.on_worker(W1, control(Op.BYE), 1.0)
    answer = alloc(core, token, len(lost), env_ids=lost, request_id=2, group=envs.group)
    assert placed(answer) == dict.fromkeys(lost, w2)
    assert core.status()["env_slots"] == {"used": 6, "free": 2}
    assert worker_status(core, w1)["state"] == "DEAD"
    assert worker_status(core, w1)["used"] == 0


def test_a_group_more_env_ids_than_a_reply_names_is_refused_before_any_slot_is_held() -> None:
    # Before: the slots were reserved, the reply was over the header limit and dropped, the
    # client timed out, and every slot stayed reserved.
    limits = Limits(max_header_bytes=2**16 + 8 * 100)
    assert limits.max_env_ids == 100
    core = BrokerCore(BrokerConfig(limits=limits))
    register(core, W1, capacity=1000)
    token = hello(core)
    assert_error(alloc(core, token, 101), "MessageTooLarge", 1, "at most 100 env ids")
    assert core.status()["env_slots"] == {"used": 0, "free": 1000}
    assert len(placed(alloc(core, token, 100, request_id=2))) == 100


def test_a_placement_whose_reply_cannot_be_encoded_is_undone() -> None:
    core = BrokerCore(BrokerConfig(limits=Limits(max_message_bytes=512)))
    register(core, W1, capacity=1000)
    token = hello(core)
    assert_error(alloc(core, token, 100), "MessageTooLarge", 1)
    assert core.status()["env_slots"] == {"used": 0, "free": 1000}
    assert core.status()["sessions"] == {"live": 1, "groups": 0, "envs": 0}
    assert len(placed(alloc(core, token, 10, request_id=2))) == 10


def test_only_the_latest_dead_workers_without_envs_are_remembered(core: BrokerCore) -> None:
    first = register(core, W1)
    core.on_worker(W1, control(Op.BYE), 0.0)
    for _ in range(DEAD_WORKERS_KEPT):
        register(core, W1)
        core.on_worker(W1, control(Op.BYE), 0.0)
    assert len(core.status()["workers"]) == DEAD_WORKERS_KEPT
    # A group of the session, on a live worker; the requests name the dead workers.
    register(core, W2, now=1.0)
    token = hello(core, now=1.0)
    group = alloc(core, token, 1, now=1.0).group
    [output] = core.on_client(CLIENT, step(first, [0], 3, token, group), 1.0)
    assert_error(to_client(output), "EnvNotOnWorker", 3, f"worker {first} died and hosts none")
    [output] = core.on_client(CLIENT, step(first + 1, [0], 4, token, group), 1.0)
    assert_error(to_client(output), "SessionLost", 4)


def test_alloc_with_ids_refuses_live_and_unknown_ids(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    token = hello(core)
    envs = alloc(core, token, 8)
    where, group = placed(envs), envs.group
    live = next(iter(where))
    assert_error(
        alloc(core, token, 1, env_ids=[live], request_id=2, group=group),
        "RemoteError",
        2,
        f"env id {live} is live on worker {where[live]}",
    )
    # Env id 7 of the group, closed: placed nowhere any more.
    assert where[7] == two_workers[1]
    [close] = core.on_client(CLIENT, request(Op.CLOSE, where[7], [7], 5, token, group), 0.0)
    assert isinstance(close, ToWorker)
    assert_error(
        alloc(core, token, 1, env_ids=[7], request_id=3, group=group),
        "RemoteError",
        3,
        "unknown env id 7",
    )
    assert_error(alloc(core, token, 2, env_ids=[7], request_id=4, group=group), "ProtocolError", 4)
    assert core.status()["env_slots"]["used"] == 7


def test_alloc_with_ids_needs_room_on_a_live_worker(core: BrokerCore) -> None:
    w1 = register(core, W1)
    token = hello(core)
    envs = alloc(core, token, 3)
    assert counts(envs) == {w1: 3}
    assert core.on_worker(W1, control(Op.BYE), 1.0) == [WorkerDied(w1, "worker-1", "left", W1)]
    lost = alloc(core, token, 3, env_ids=[0, 1, 2], request_id=2, group=envs.group)
    assert_error(lost, "NoWorkerAvailable", 2)
    w2 = register(core, W2, now=2.0)
    moved = alloc(core, token, 3, env_ids=[0, 1, 2], request_id=3, now=2.0, group=envs.group)
    assert placed(moved) == {
        0: w2,
        1: w2,
        2: w2,
    }
    assert w1 != w2


def test_close_on_a_live_worker_frees_its_slots_as_it_forwards(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    w1, w2 = two_workers
    token = hello(core)
    envs = alloc(core, token, 8)
    on_w1, on_w2 = on(envs, w1), on(envs, w2)
    assert worker_status(core, w1)["used"] == 4
    # An env id of the group that is not on w1 frees nothing there, nor on its own worker.
    close = request(Op.CLOSE, w1, [*on_w1[:3], on_w2[0]], 5, token, envs.group)
    [output] = core.on_client(CLIENT, close, 0.0)
    assert isinstance(output, ToWorker)
    assert output.identity == W1
    assert worker_status(core, w1)["used"] == 1
    assert worker_status(core, w1)["free"] == 7
    assert worker_status(core, w2)["used"] == 4
    assert len(core.on_worker(W1, reply(CLIENT, 5, on_w1[:3]), 0.1)) == 1


def test_close_on_a_dead_worker_answers_at_once(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    w1 = two_workers[0]
    token = hello(core)
    envs = alloc(core, token, 4)
    on_w1, group = on(envs, w1), envs.group
    assert len(on_w1) == 2
    core.on_worker(W1, control(Op.BYE), 1.0)
    [output] = core.on_client(CLIENT, request(Op.CLOSE, w1, on_w1, 6, token, group), 1.0)
    answer = to_client(output)
    assert answer.op is Op.REPLY
    assert answer.request_id == 6
    assert answer.env_ids is not None
    assert answer.env_ids.tolist() == on_w1
    again = alloc(core, token, 1, env_ids=on_w1[:1], request_id=7, group=group)
    assert_error(again, "RemoteError", 7, "unknown")


# ---------------------------------------------------------------- broker lifetimes


def lifetime(epoch: Epoch | None, num_envs: int = 16) -> tuple[BrokerCore, dict[int, int]]:
    """A core numbering from ``epoch`` (a fresh one when ``None``, as a broker does) with two
    workers and ``num_envs`` echo envs placed on them: env id -> worker id."""
    core = BrokerCore(BrokerConfig(epoch=epoch))
    register(core, W1, capacity=num_envs)
    register(core, W2, capacity=num_envs)
    answer = alloc(core, hello(core), num_envs)
    assert answer.env_ids is not None
    assert answer.group == answer.env_ids[0]
    return core, placed(answer)


def test_a_core_numbers_env_ids_and_worker_ids_from_its_epoch() -> None:
    _, where = lifetime(Epoch(first_env_id=5000, first_worker_id=70))
    assert sorted(where) == list(range(5000, 5016))
    assert sorted(set(where.values())) == [70, 71]


def test_two_broker_lifetimes_share_no_env_id() -> None:
    _, first = lifetime(None)
    _, second = lifetime(None)
    assert not first.keys() & second.keys()


def test_fresh_epochs_are_far_apart_in_env_ids_and_short_in_worker_ids() -> None:
    # 100 lifetimes giving out a million env ids each: a shared id would need two starts closer
    # than that (odds about 2e-6 for random starts below 2**52).
    starts = sorted(Epoch.fresh().first_env_id for _ in range(100))
    assert min(b - a for a, b in itertools.pairwise(starts)) > 10**6
    assert all(1 <= Epoch.fresh().first_worker_id < 10**6 for _ in range(100))


def test_ids_stay_below_2_to_the_53() -> None:
    for epoch in (Epoch(first_env_id=2**52 - 1, first_worker_id=10**6 - 1), None):
        _, where = lifetime(epoch, num_envs=1000)
        assert max(*where, *where.values()) < ID_LIMIT
    for bad, limit in (((2**52, 1), r"2\*\*52"), ((-1, 1), r"2\*\*52")):
        with pytest.raises(ValueError, match=limit):
            Epoch(*bad)
    for bad in ((0, 0), (0, 10**6)):
        with pytest.raises(ValueError, match=r"10\*\*6"):
            Epoch(*bad)


def test_a_group_from_an_earlier_lifetime_reaches_no_worker() -> None:
    old_core, old = lifetime(EPOCH)
    old_token = hello(old_core)
    old_group = min(old)
    core, new = lifetime(Epoch(first_env_id=1000, first_worker_id=100))
    stale: dict[int, list[int]] = {}
    for env_id, worker_id in old.items():
        stale.setdefault(worker_id, []).append(env_id)
    # The client's session came from the earlier broker too: nothing is done for it.
    [output] = core.on_client(CLIENT, step(1, stale[1], 1, old_token, old_group), 1.0)
    assert_error(to_client(output), "UnknownSession", 1, "restarted")
    # Its new session still reaches none of the new envs with the old group.
    token = hello(core, now=1.0)
    for request_id, (worker_id, env_ids) in enumerate(stale.items(), start=2):
        for op, frames in (
            (Op.STEP, step(worker_id, env_ids, request_id, token, old_group)),
            (Op.CLOSE, request(Op.CLOSE, worker_id, env_ids, request_id, token, old_group)),
        ):
            [output] = core.on_client(CLIENT, frames, 1.0)
            answer = to_client(output)
            assert_error(answer, "EnvNotOnWorker", request_id, "earlier broker")
            assert answer.env_ids is not None and answer.env_ids.tolist() == env_ids, op
    assert core.status()["in_flight"] == 0
    assert core.status()["env_slots"]["used"] == len(new)


# ---------------------------------------------------------------- bad input


def test_garbage_from_a_client_gets_a_protocol_error(core: BrokerCore) -> None:
    [output] = core.on_client(CLIENT, [b"\xc1garbage"], 0.0)
    assert_error(to_client(output), "ProtocolError", 0, "not valid msgpack")
    [output] = core.on_client(CLIENT, [], 0.0)
    assert_error(to_client(output), "ProtocolError", 0, "empty")


def test_wrong_version_and_unknown_op_are_refused_with_the_request_id(core: BrokerCore) -> None:
    newer = PROTOCOL_VERSION + 1
    [output] = core.on_client(CLIENT, [pack({"v": newer, "op": int(Op.PING), "id": 5})], 0.0)
    assert_error(to_client(output), "ProtocolError", 5, f"version {newer}")
    [output] = core.on_client(CLIENT, [pack({"v": PROTOCOL_VERSION - 1, "op": 4, "id": 7})], 0.0)
    assert_error(to_client(output), "ProtocolError", 7, f"version {PROTOCOL_VERSION - 1}")
    [output] = core.on_client(CLIENT, [pack({"v": PROTOCOL_VERSION, "op": 99, "id": 6})], 0.0)
    assert_error(to_client(output), "ProtocolError", 6, "unknown op 99")


def test_oversized_message_is_refused(core: BrokerCore) -> None:
    small = BrokerCore(config(limits=Limits(max_header_bytes=512, max_message_bytes=1024)))
    w1 = register(small, W1)
    token = hello(small)
    group = alloc(small, token, 1).group
    big = request(Op.STEP, w1, [0], 3, token, group, actions=[{"message": "x" * 2000}])
    [output] = small.on_client(CLIENT, big, 0.0)
    assert_error(to_client(output), "MessageTooLarge", 3, "over the limit")
    assert small.status()["in_flight"] == 0


def test_answer_ops_from_a_client_are_refused(core: BrokerCore) -> None:
    [output] = core.on_client(CLIENT, encode(Message(Op.REPLY, 4)), 0.0)
    assert_error(to_client(output), "ProtocolError", 4, "REPLY")
    [output] = core.on_client(CLIENT, control(Op.HEARTBEAT)[1:], 0.0)
    assert_error(to_client(output), "ProtocolError", 0, "HEARTBEAT")


def test_malformed_frames_from_a_worker_get_an_error_on_the_control_route(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    [output] = core.on_worker(W1, [CONTROL, b"\xc1"], 0.0)
    assert_error(to_worker(output, W1), "ProtocolError", 0)
    [output] = core.on_worker(W1, [], 0.0)
    assert_error(to_worker(output, W1), "ProtocolError", 0, "empty")
    [output] = core.on_worker(W1, [CONTROL, *encode(Message(Op.PING))], 0.0)
    assert_error(to_worker(output, W1), "ProtocolError", 0, "PING")
    [output] = core.on_worker(W1, [CLIENT, *encode(Message(Op.PING, 1))], 0.0)
    assert_error(to_worker(output, W1), "ProtocolError", 0, "PING")
    huge = [CONTROL, *encode(Message(Op.HEARTBEAT)), b"x" * 2000]
    [output] = BrokerCore(config(limits=Limits(512, 1024))).on_worker(W1, huge, 0.0)
    assert_error(to_worker(output, W1), "MessageTooLarge", 0)
    # An error on the control route is logged, never answered.
    error = encode(Message(Op.ERROR, meta={"type": "ProtocolError", "message": "?"}))
    assert core.on_worker(W1, [CONTROL, *error], 0.0) == []


def test_malformed_answer_still_answers_its_request(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    token = hello(core)
    envs = alloc(core, token, 4)
    assert on(envs, two_workers[0]) == [0, 1]
    [forwarded] = core.on_client(CLIENT, step(two_workers[0], [0, 1], 12, token, envs.group), 0.0)
    assert isinstance(forwarded, ToWorker)
    broken = pack({"v": PROTOCOL_VERSION, "op": int(Op.REPLY), "id": 12, "pl": [["rew", "m"]]})
    outputs = core.on_worker(W1, [CLIENT, broken], 0.1)
    answer = to_client(outputs[0])
    assert_error(answer, "ProtocolError", 12, "malformed answer")
    assert answer.env_ids is not None
    assert answer.env_ids.tolist() == [0, 1]
    assert_error(to_worker(outputs[1], W1), "ProtocolError", 0)
    assert core.status()["in_flight"] == 0


frame = st.one_of(
    st.binary(max_size=64),
    st.builds(
        pack,
        st.dictionaries(
            st.sampled_from(["v", "op", "id", "w", "ids", "s", "g", "meta", "pl", "x"]),
            st.one_of(st.integers(-2, 40), st.binary(max_size=16), st.text(max_size=4)),
        ),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    client_frames=st.lists(frame, max_size=3),
    worker_frames=st.lists(
        st.one_of(st.sampled_from([CONTROL, CLIENT, BROKER_ROUTE]), frame), max_size=4
    ),
)
def test_no_input_makes_the_core_raise(
    client_frames: list[bytes], worker_frames: list[bytes]
) -> None:
    core = BrokerCore(config())
    register(core, W1)
    token = hello(core)
    [forwarded] = core.on_client(CLIENT, step(1, [0], 1, token, alloc(core, token, 1).group), 0.0)
    assert isinstance(forwarded, ToWorker)
    for output in core.on_client(CLIENT, client_frames, 0.0):
        assert isinstance(output, ToClient | ToWorker)
    for identity in (W1, W2):
        for output in core.on_worker(identity, worker_frames, 0.0):
            assert isinstance(output, ToClient | ToWorker)


# ---------------------------------------------------------------- broker requests


def test_ping_and_status(core: BrokerCore, two_workers: tuple[int, int]) -> None:
    [output] = core.on_client(CLIENT, encode(Message(Op.PING, 3)), 0.0)
    pong = to_client(output)
    assert (pong.op, pong.request_id) == (Op.REPLY, 3)
    token = hello(core)
    envs = alloc(core, token, 3)
    on_w1 = on(envs, two_workers[0])
    assert len(on_w1) == 2
    core.on_client(CLIENT, step(two_workers[0], on_w1, 2, token, envs.group), 0.0)
    [output] = core.on_client(CLIENT, encode(Message(Op.STATUS, 4)), 1.5)
    status = to_client(output).meta["status"]
    assert status["in_flight"] == 1
    assert status["clients"] == 1
    assert status["env_slots"] == {"used": 3, "free": 13}
    assert status["sessions"] == {"live": 1, "groups": 1, "envs": 3}
    first = status["workers"][0]
    assert first == {
        "id": two_workers[0],
        "name": "worker-1",
        "pid": 1000,
        # its READY said nothing of where it runs (a worker of an earlier version)
        "provider": None,
        "host": None,
        "instance": None,
        "age_s": 1.5,
        "state": "READY",
        "envs": ["echo"],
        "capacity": 8,
        "used": 2,
        "free": 6,
        "steps_served": 2,
        "sandbox": {},
        "last_seen_ago": 1.5,
    }
