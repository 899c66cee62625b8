"""Client sessions at the broker: who may act on which env group, leases and quotas.

Driven through :class:`BrokerCore` with real protocol messages and a fake clock, and through
:class:`broker.sessions.SessionTable` directly where that says it more simply.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np
import pytest

import broker.sessions
from broker.core import BROKER_ROUTE, BrokerCore, Output, ToClient, ToWorker
from broker.sessions import SessionTable
from openenv_zmq.errors import LeaseExpired, NotOwner, QuotaExceeded, RemoteError, UnknownSession
from openenv_zmq.protocol import Frame, Message, Op, decode, encode
from openenv_zmq.protocol.schema import SESSION_BYTES
from tests.unit.test_broker_core import (
    CLIENT,
    CLIENT_B,
    W1,
    W2,
    alloc,
    assert_error,
    config,
    control,
    counts,
    hello,
    ids,
    on,
    placed,
    register,
    reply,
    request,
    step,
    to_client,
    worker_status,
)

LEASE = 10.0
KEY_A = "A" * 40
KEY_B = "B" * 40


# ---------------------------------------------------------------- helpers


@pytest.fixture
def core() -> BrokerCore:
    # Workers never fall silent here (liveness 1000 intervals): leases are what these tests time.
    return BrokerCore(config(heartbeat_interval=1.0, liveness=1000.0, lease=LEASE))


@pytest.fixture
def two_workers(core: BrokerCore) -> tuple[int, int]:
    return register(core, W1), register(core, W2)


def send(
    core: BrokerCore,
    frames: Sequence[Frame],
    now: float = 0.0,
    client: bytes = CLIENT,
    key: str | None = None,
) -> Output:
    """The one output of a client message."""
    [output] = core.on_client(client, frames, now, key=key)
    return output


def answer(
    core: BrokerCore,
    frames: Sequence[Frame],
    now: float = 0.0,
    client: bytes = CLIENT,
    key: str | None = None,
) -> Message:
    """The broker's own answer to a client message (it was not forwarded)."""
    return to_client(send(core, frames, now, client, key), client)


def ping(session: bytes | None, request_id: int = 1) -> list[Frame]:
    return encode(Message(Op.PING, request_id, session=session))


def alloc_frames(
    session: bytes | None,
    num_envs: int,
    request_id: int = 1,
    env_ids: Sequence[int] | None = None,
    group: int | None = None,
) -> list[Frame]:
    message = Message(
        Op.ALLOC,
        request_id,
        env_ids=None if env_ids is None else ids(*env_ids),
        meta={"env": "echo", "num_envs": num_envs},
        session=session,
        group=group,
    )
    return encode(message)


def by_worker(envs: Message) -> dict[int, list[int]]:
    """Worker id -> the env ids the ALLOC answer ``envs`` placed on it."""
    result: dict[int, list[int]] = {}
    for env_id, worker in placed(envs).items():
        result.setdefault(worker, []).append(env_id)
    return result


def broker_closes(outputs: Sequence[Output]) -> dict[bytes, list[Message]]:
    """The CLOSE requests the broker itself sent, by worker identity; nothing else in
    ``outputs`` goes to a client or on the broker's route."""
    closes: dict[bytes, list[Message]] = {}
    for output in outputs:
        assert not isinstance(output, ToClient), output
        if isinstance(output, ToWorker) and bytes(output.frames[0]) == BROKER_ROUTE:
            message = decode(output.frames[1:])
            assert message.op is Op.CLOSE
            closes.setdefault(output.identity, []).append(message)
    return closes


def closed_ids(closes: list[Message]) -> list[int]:
    result: list[int] = []
    for close in closes:
        assert close.env_ids is not None
        result += close.env_ids.tolist()
    return sorted(result)


def sessions(core: BrokerCore) -> dict[str, int]:
    result: dict[str, int] = core.status()["sessions"]
    return result


def used(core: BrokerCore) -> int:
    result: int = core.status()["env_slots"]["used"]
    return result


def tick_until(
    core: BrokerCore, start: float, end: float, every: float = 0.25, keep: Sequence[bytes] = ()
) -> list[tuple[float, Output]]:
    """Ticks from ``start`` to ``end`` (included) every ``every`` seconds, each session of
    ``keep`` pinging just before each tick; every output with the time of its tick."""
    outputs: list[tuple[float, Output]] = []
    steps = round((end - start) / every)
    for i in range(steps + 1):
        now = start + i * every
        for token in keep:
            pong = answer(core, ping(token), now, CLIENT_B)
            assert pong.op is Op.REPLY, pong.meta
        outputs += [(now, output) for output in core.on_tick(now)]
    return outputs


def first_close_time(outputs: list[tuple[float, Output]]) -> float | None:
    for now, output in outputs:
        if broker_closes([output]):
            return now
    return None


# ---------------------------------------------------------------- ownership


@pytest.mark.parametrize("op", [Op.STEP, Op.RESET, Op.STATE, Op.CLOSE])
def test_another_sessions_request_on_my_group_is_refused_and_forwards_nothing(
    core: BrokerCore, two_workers: tuple[int, int], op: Op
) -> None:
    mine, theirs = hello(core), hello(core, CLIENT_B)
    envs = alloc(core, mine, 6)
    their_group = alloc(core, theirs, 2, client=CLIENT_B).group
    where = by_worker(envs)
    before = (core.status()["env_slots"], sessions(core))
    for request_id, (worker, env_ids) in enumerate(where.items(), start=1):
        # Naming my group, or naming their own group with my env ids.
        for group, text in (
            (envs.group, "belongs to another client session"),
            (their_group, "not in env group"),
        ):
            frames = request(op, worker, env_ids, request_id, theirs, group)
            refused = answer(core, frames, 1.0, CLIENT_B)
            assert_error(refused, "NotOwner", request_id, text)
            assert refused.env_ids is not None
            assert refused.env_ids.tolist() == env_ids
    assert core.status()["in_flight"] == 0
    assert (core.status()["env_slots"], sessions(core)) == before
    for w in two_workers:
        assert worker_status(core, w)["used"] == 4
    # My envs are untouched: I step every one of them, on the worker it was placed on.
    for request_id, (worker, env_ids) in enumerate(where.items(), start=10):
        forwarded = send(core, step(worker, env_ids, request_id, mine, envs.group), 2.0)
        assert isinstance(forwarded, ToWorker)
        assert forwarded.identity == {two_workers[0]: W1, two_workers[1]: W2}[worker]
    assert core.status()["in_flight"] == 2


def test_env_ids_outside_the_named_group_are_refused(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    w1 = two_workers[0]
    mine, theirs = hello(core), hello(core, CLIENT_B)
    first = alloc(core, mine, 4)  # env ids 0..3
    second = alloc(core, mine, 4, request_id=2)  # 4..7
    alloc(core, theirs, 2, client=CLIENT_B)  # 8..9
    assert (first.group, second.group) == (0, 4)
    for request_id, (env_ids, outside) in enumerate(
        (([3], 3), ([4, 3], 3), ([8], 8), ([5, 9], 9), ([4, 2**40], 2**40)), start=1
    ):
        refused = answer(core, step(w1, env_ids, request_id, mine, second.group))
        assert_error(refused, "NotOwner", request_id, f"env id {outside} is not in env group 4")
    assert core.status()["in_flight"] == 0
    # The edges of the range are in it.
    assert isinstance(send(core, step(w1, [4, 7], 9, mine, second.group)), ToWorker)


def test_a_foreign_session_cannot_move_my_lost_envs(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    w1, w2 = two_workers
    mine, theirs = hello(core), hello(core, CLIENT_B)
    envs = alloc(core, mine, 4)
    their_envs = alloc(core, theirs, 2, client=CLIENT_B)
    their_group = their_envs.group
    lost = on(envs, w1)
    core.on_worker(W1, control(Op.BYE), 1.0)
    for request_id, group in enumerate((envs.group, their_group), start=2):
        refused = alloc(
            core,
            theirs,
            len(lost),
            request_id=request_id,
            env_ids=lost,
            now=1.0,
            group=group,
            client=CLIENT_B,
        )
        assert_error(refused, "NotOwner", request_id)
    # Still tombstones, mine and theirs.
    assert worker_status(core, w1)["used"] == len(lost) + len(on(their_envs, w1))
    assert used(core) == 3
    moved = alloc(core, mine, len(lost), request_id=5, env_ids=lost, now=2.0, group=envs.group)
    assert placed(moved) == dict.fromkeys(lost, w2)


def test_a_request_without_a_session_is_a_protocol_error(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    token = hello(core)
    group = alloc(core, token, 2).group
    for request_id, frames in enumerate(
        (
            encode(Message(Op.STEP, 1, worker=two_workers[0], env_ids=ids(0), group=group)),
            encode(Message(Op.CLOSE, 2, worker=two_workers[0], env_ids=ids(0), group=group)),
            alloc_frames(None, 1, request_id=3),
        ),
        start=1,
    ):
        assert_error(answer(core, frames), "ProtocolError", request_id, "needs a client session")
    assert core.status()["in_flight"] == 0
    assert used(core) == 2
    # PING and STATUS need none.
    assert answer(core, ping(None)).op is Op.REPLY
    assert answer(core, encode(Message(Op.STATUS, 9))).op is Op.REPLY


def test_a_forged_token_is_an_unknown_session(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    token = hello(core)
    group = alloc(core, token, 2).group
    forged = secrets.token_bytes(SESSION_BYTES)
    for request_id, frames in enumerate(
        (
            step(two_workers[0], [0], 1, forged, group),
            alloc_frames(forged, 1, request_id=2),
            ping(forged, request_id=3),
        ),
        start=1,
    ):
        assert_error(answer(core, frames), "UnknownSession", request_id, "no such client session")
    assert core.status()["in_flight"] == 0
    assert sessions(core) == {"live": 1, "groups": 1, "envs": 2}


def test_a_request_without_its_group_is_a_protocol_error(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    token = hello(core)
    envs = alloc(core, token, 2)
    refused = answer(core, step(two_workers[0], [0], 1, token, None))
    assert_error(refused, "ProtocolError", 1, "needs the id ('g')")
    core.on_worker(W1, control(Op.BYE), 1.0)
    refused = answer(core, alloc_frames(token, 1, 2, env_ids=[0]), 1.0)
    assert_error(refused, "ProtocolError", 2, "needs the id ('g')")
    assert core.status()["in_flight"] == 0
    assert placed(alloc(core, token, 1, request_id=3, env_ids=[0], group=envs.group, now=1.0)) == {
        0: two_workers[1]
    }


def test_a_session_is_bound_to_the_key_that_opened_it(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    w1 = two_workers[0]
    token = hello(core, key=KEY_A)
    envs = alloc(core, token, 2, key=KEY_A)
    assert envs.op is Op.REPLY
    for key in (KEY_B, None):
        for request_id, frames in enumerate(
            (
                step(w1, [0], 1, token, envs.group),
                alloc_frames(token, 1, request_id=2),
                ping(token, request_id=3),
            ),
            start=1,
        ):
            refused = answer(core, frames, 1.0, key=key)
            assert_error(refused, "NotOwner", request_id, "another client key")
    assert core.status()["in_flight"] == 0
    assert used(core) == 2
    assert isinstance(send(core, step(w1, [0], 4, token, envs.group), 1.0, key=KEY_A), ToWorker)
    # A session opened without a key is no one key's either.
    keyless = hello(core)
    assert_error(answer(core, ping(keyless, 5), key=KEY_A), "NotOwner", 5, "another client key")


def test_requests_with_the_wrong_key_do_not_renew_the_lease(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    token = hello(core, key=KEY_A)
    alloc(core, token, 2, key=KEY_A)
    for now in (4.0, 8.0):
        assert_error(answer(core, ping(token), now, key=KEY_B), "NotOwner", 1)
    outputs = tick_until(core, 0.0, LEASE + 2.0)
    assert LEASE <= (first_close_time(outputs) or 0.0) <= LEASE + 1.0


# ---------------------------------------------------------------- leases


def test_a_silent_session_has_its_groups_closed_at_the_next_sweep(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    w1, w2 = two_workers
    silent, active = hello(core), hello(core, CLIENT_B)
    first, second = alloc(core, silent, 5), alloc(core, silent, 3, request_id=2)
    assert first.group is not None and second.group is not None
    groups = {first.group: first, second.group: second}
    kept = alloc(core, active, 2, client=CLIENT_B)
    assert sessions(core) == {"live": 2, "groups": 3, "envs": 10}
    assert used(core) == 10
    outputs = tick_until(core, 0.0, LEASE + 2.0, keep=[active])
    closed_at = first_close_time(outputs)
    assert closed_at is not None
    assert LEASE <= closed_at <= LEASE + 1.0  # within a sweep interval of the lease's end
    closes = broker_closes([output for _, output in outputs])
    # One CLOSE per group and worker, to each worker with exactly the silent session's envs there.
    assert set(closes) == {W1, W2}
    worker_ids = {W1: w1, W2: w2}
    for identity, messages in closes.items():
        expected = sorted(
            env_id
            for envs in (first, second)
            for env_id in by_worker(envs).get(worker_ids[identity], [])
        )
        assert closed_ids(messages) == expected
        for close in messages:
            assert close.worker == worker_ids[identity]
            assert close.session == silent
            assert close.group is not None
            assert close.env_ids is not None
            assert close.env_ids.tolist() == on(groups[close.group], worker_ids[identity])
    # One CLOSE per group and worker it has envs on, each its own request id.
    sent = [close for messages in closes.values() for close in messages]
    assert (
        len(sent)
        == len({c.request_id for c in sent})
        == sum(len(by_worker(g)) for g in groups.values())
    )
    # Its slots are free, its session and groups gone; the other session keeps its envs.
    assert used(core) == 2
    assert sessions(core) == {"live": 1, "groups": 1, "envs": 2}
    for w in (w1, w2):
        assert worker_status(core, w)["used"] == 1
    later = LEASE + 3.0
    for request_id, frames in enumerate(
        (
            step(w1, on(first, w1), 1, silent, first.group),
            alloc_frames(silent, 1, request_id=2),
            ping(silent, request_id=3),
        ),
        start=1,
    ):
        assert_error(answer(core, frames, later), "LeaseExpired", request_id, "lease expired")
    worker = next(iter(by_worker(kept)))
    forwarded = send(core, step(worker, on(kept, worker), 4, active, kept.group), later, CLIENT_B)
    assert isinstance(forwarded, ToWorker)
    # Nothing more is closed later, and a new session works.
    assert not broker_closes([o for _, o in tick_until(core, later, later + LEASE / 2)])
    assert alloc(core, hello(core, now=later), 8, now=later).op is Op.REPLY


def test_a_ping_with_the_session_keeps_it_alive(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    token = hello(core)
    alloc(core, token, 4)
    pong = answer(core, ping(token), 8.0)
    assert (pong.op, pong.request_id) == (Op.REPLY, 1)
    outputs = tick_until(core, 0.0, 8.0 + LEASE + 2.0)
    closed_at = first_close_time(outputs)
    assert closed_at is not None
    assert 8.0 + LEASE <= closed_at <= 8.0 + LEASE + 1.0


@pytest.mark.parametrize("op", [Op.STEP, Op.RESET, Op.STATE, Op.ALLOC, Op.CLOSE])
def test_any_request_renews_the_lease(
    core: BrokerCore, two_workers: tuple[int, int], op: Op
) -> None:
    w1 = two_workers[0]
    token = hello(core)
    envs = alloc(core, token, 4)
    frames = (
        alloc_frames(token, 1, request_id=7)
        if op is Op.ALLOC
        else request(op, w1, on(envs, w1)[:1], 7, token, envs.group)
    )
    output = send(core, frames, 8.0)
    assert isinstance(output, ToClient if op is Op.ALLOC else ToWorker)
    outputs = tick_until(core, 0.0, 8.0 + LEASE + 2.0)
    closed_at = first_close_time(outputs)
    assert closed_at is not None
    assert 8.0 + LEASE <= closed_at <= 8.0 + LEASE + 1.0
    assert used(core) == 0


def test_a_refused_request_of_the_session_renews_its_lease_too(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    token = hello(core)
    alloc(core, token, 2)
    refused = answer(core, step(two_workers[0], [0], 7, token, 10**6), 8.0)
    assert_error(refused, "EnvNotOnWorker", 7)
    outputs = tick_until(core, 0.0, 8.0 + LEASE + 2.0)
    assert 8.0 + LEASE <= (first_close_time(outputs) or 0.0) <= 8.0 + LEASE + 1.0


def test_the_workers_answer_to_the_brokers_close_goes_nowhere(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    token = hello(core)
    alloc(core, token, 4)
    closes = broker_closes([o for _, o in tick_until(core, 0.0, LEASE + 1.0)])
    assert set(closes) == {W1, W2}
    for identity, messages in closes.items():
        for close in messages:
            answers = (
                Message(Op.REPLY, close.request_id, env_ids=close.env_ids),
                Message(
                    Op.ERROR,
                    close.request_id,
                    env_ids=close.env_ids,
                    meta={"type": "EnvNotOnWorker", "message": "gone"},
                ),
            )
            for message in answers:
                assert core.on_worker(identity, [BROKER_ROUTE, *encode(message)], 12.0) == []
        # Whatever it says: even an answer that does not decode is nobody's to hear.
        assert core.on_worker(identity, [BROKER_ROUTE, b"\xc1"], 12.0) == []
    assert core.status()["in_flight"] == 0
    assert core.status()["clients"] == 0
    for w in two_workers:
        assert worker_status(core, w)["last_seen_ago"] == 0.0
        assert worker_status(core, w)["state"] == "READY"


def test_an_expired_sessions_envs_on_a_dead_worker_are_freed_without_a_close(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    w1, w2 = two_workers
    token = hello(core)
    envs = alloc(core, token, 4)
    core.on_worker(W1, control(Op.BYE), 1.0)
    assert worker_status(core, w1)["used"] == 2  # tombstones
    outputs = [o for _, o in tick_until(core, 1.0, LEASE + 2.0)]
    closes = broker_closes(outputs)
    assert set(closes) == {W2}
    assert closed_ids(closes[W2]) == on(envs, w2)
    assert not any(isinstance(o, ToWorker) and o.identity == W1 for o in outputs)
    assert worker_status(core, w1)["used"] == 0
    assert worker_status(core, w2)["used"] == 0
    assert sessions(core) == {"live": 0, "groups": 0, "envs": 0}
    assert core.status()["env_slots"] == {"used": 0, "free": 8}


def test_an_expired_session_whose_envs_are_all_on_a_dead_worker_sends_nothing(
    core: BrokerCore,
) -> None:
    w1 = register(core, W1)
    token = hello(core)
    assert counts(alloc(core, token, 3)) == {w1: 3}
    core.on_worker(W1, control(Op.BYE), 1.0)
    outputs = [o for _, o in tick_until(core, 1.0, LEASE + 2.0)]
    assert outputs == []
    assert sessions(core) == {"live": 0, "groups": 0, "envs": 0}
    assert worker_status(core, w1)["used"] == 0


def test_next_timeout_never_exceeds_the_sweep_interval_while_sessions_exist() -> None:
    lease = 2.0
    sweep = lease / 4  # below the heartbeat interval
    core = BrokerCore(config(heartbeat_interval=1.0, liveness=1000.0, lease=lease))
    token = hello(core)
    assert core.next_timeout(0.0) <= sweep
    register(core, W1)
    alloc(core, token, 2)
    now, closed_at = 0.0, None
    while now < 6.0:
        timeout = core.next_timeout(now)
        assert 0.0 <= timeout <= sweep
        now += timeout
        outputs = core.on_tick(now)
        if broker_closes(outputs) and closed_at is None:
            closed_at = now
        core.on_worker(W1, control(Op.HEARTBEAT), now)
    assert closed_at is not None
    assert lease <= closed_at <= lease + sweep
    assert sessions(core)["live"] == 0


def test_the_loop_ticks_in_time_for_a_long_lease() -> None:
    core = BrokerCore(config(heartbeat_interval=1.0, liveness=1000.0))  # lease 300 s
    token = hello(core)
    register(core, W1)
    alloc(core, token, 1)
    now = 0.0
    while now < 305.0:
        timeout = core.next_timeout(now)
        assert 0.0 <= timeout <= 1.0
        now += max(timeout, 0.01)
        core.on_tick(now)
        core.on_worker(W1, control(Op.HEARTBEAT), now)
        if sessions(core)["live"] == 0:
            break
    assert 300.0 <= now <= 301.0


# ---------------------------------------------------------------- quotas and limits


@pytest.fixture
def two_workers_quota() -> BrokerCore:
    """A core allowing 10 envs per client session, with worker 1 (``W1``) and 2 (``W2``)
    of 8 slots each."""
    core = BrokerCore(config(max_envs_per_client=10))
    assert (register(core, W1), register(core, W2)) == (1, 2)
    return core


def test_a_session_may_hold_at_most_its_quota_of_envs(two_workers_quota: BrokerCore) -> None:
    core = two_workers_quota
    w1, w2 = 1, 2
    token = hello(core)
    first = alloc(core, token, 6)
    assert first.op is Op.REPLY
    assert_error(alloc(core, token, 5, request_id=2), "QuotaExceeded", 2, "11", "allows 10")
    assert used(core) == 6
    assert sessions(core) == {"live": 1, "groups": 1, "envs": 6}
    # Nothing reserved, not even env ids: the next group starts right after the first.
    fits = alloc(core, token, 4, request_id=3)
    assert fits.env_ids is not None
    assert fits.env_ids.tolist() == [6, 7, 8, 9]
    assert_error(alloc(core, token, 1, request_id=4), "QuotaExceeded", 4)
    # Closing the first group (a CLOSE forwarded to each worker) gives its slots back.
    for request_id, (worker, env_ids) in enumerate(by_worker(first).items(), start=5):
        close = send(core, request(Op.CLOSE, worker, env_ids, request_id, token, first.group))
        assert isinstance(close, ToWorker)
        assert close.identity == {w1: W1, w2: W2}[worker]
    assert sessions(core) == {"live": 1, "groups": 1, "envs": 4}
    assert alloc(core, token, 6, request_id=7).op is Op.REPLY
    assert sessions(core)["envs"] == 10


def test_closing_a_group_lets_a_full_quota_be_allocated_again(
    two_workers_quota: BrokerCore,
) -> None:
    core = two_workers_quota
    token = hello(core)
    first = alloc(core, token, 6)
    assert_error(alloc(core, token, 5, request_id=2), "QuotaExceeded", 2)
    for request_id, (worker, env_ids) in enumerate(by_worker(first).items(), start=3):
        frames = request(Op.CLOSE, worker, env_ids, request_id, token, first.group)
        assert isinstance(send(core, frames), ToWorker)
    assert sessions(core) == {"live": 1, "groups": 0, "envs": 0}
    assert used(core) == 0
    assert len(placed(alloc(core, token, 10, request_id=5))) == 10


def test_each_session_has_a_quota_of_its_own(two_workers_quota: BrokerCore) -> None:
    core = two_workers_quota
    mine, theirs = hello(core), hello(core, CLIENT_B)
    assert alloc(core, mine, 6).op is Op.REPLY
    assert len(placed(alloc(core, theirs, 10, client=CLIENT_B))) == 10
    assert_error(alloc(core, theirs, 1, request_id=2, client=CLIENT_B), "QuotaExceeded", 2)
    # Slots, not the quota, refuse mine now: 16 of 16 are used.
    assert_error(alloc(core, mine, 1, request_id=3), "NoWorkerAvailable", 3)
    assert sessions(core) == {"live": 2, "groups": 2, "envs": 16}


def test_a_refused_quota_reserves_nothing_even_when_slots_are_short(
    two_workers_quota: BrokerCore,
) -> None:
    core = two_workers_quota
    token = hello(core)
    assert_error(alloc(core, token, 11), "QuotaExceeded", 1)
    assert_error(alloc(core, token, 17, request_id=2), "QuotaExceeded", 2)
    assert used(core) == 0
    assert sessions(core) == {"live": 1, "groups": 0, "envs": 0}


def test_hello_beyond_the_session_limit_is_refused() -> None:
    limited = BrokerCore(
        config(heartbeat_interval=1.0, liveness=1000.0, lease=LEASE, max_client_sessions=2)
    )
    first, second = hello(limited), hello(limited, CLIENT_B)
    refused = answer(limited, encode(Message(Op.HELLO, 3)))
    assert_error(refused, "RemoteError", 3, "client sessions are open")
    assert sessions(limited)["live"] == 2
    # Both still work; once one expires, there is room again.
    assert answer(limited, ping(first), 5.0).op is Op.REPLY
    assert answer(limited, ping(second), 5.0, CLIENT_B).op is Op.REPLY
    tick_until(limited, 0.0, 5.0 + LEASE + 1.0, keep=[second])
    assert sessions(limited)["live"] == 1
    assert len(hello(limited, now=16.0)) == SESSION_BYTES


# ---------------------------------------------------------------- group lifetime


def test_closing_every_env_id_of_a_group_removes_it(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    w1, w2 = two_workers
    token = hello(core)
    envs, other = alloc(core, token, 4), alloc(core, token, 2, request_id=2)
    assert sessions(core) == {"live": 1, "groups": 2, "envs": 6}
    [head, *rest] = on(envs, w1)
    assert isinstance(send(core, request(Op.CLOSE, w1, [head], 3, token, envs.group)), ToWorker)
    assert sessions(core) == {"live": 1, "groups": 2, "envs": 5}
    assert isinstance(send(core, request(Op.CLOSE, w1, rest, 4, token, envs.group)), ToWorker)
    assert sessions(core)["groups"] == 2
    close = request(Op.CLOSE, w2, on(envs, w2), 5, token, envs.group)
    assert isinstance(send(core, close), ToWorker)
    assert sessions(core) == {"live": 1, "groups": 1, "envs": 2}
    for request_id, frames in enumerate(
        (
            step(w1, [head], 6, token, envs.group),
            request(Op.CLOSE, w2, on(envs, w2), 7, token, envs.group),
        ),
        start=6,
    ):
        refused = answer(core, frames)
        assert_error(
            refused, "EnvNotOnWorker", request_id, f"no open env group {envs.group}: it was closed"
        )
    assert core.status()["in_flight"] == 3
    # The session's other group is still its own.
    worker = next(iter(by_worker(other)))
    assert isinstance(send(core, step(worker, on(other, worker), 8, token, other.group)), ToWorker)


def test_closing_a_groups_last_envs_on_a_dead_worker_removes_it(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    w1, w2 = two_workers
    token = hello(core)
    envs = alloc(core, token, 4)
    close = request(Op.CLOSE, w2, on(envs, w2), 1, token, envs.group)
    assert isinstance(send(core, close), ToWorker)
    core.on_worker(W1, control(Op.BYE), 1.0)
    closed = answer(core, request(Op.CLOSE, w1, on(envs, w1), 2, token, envs.group), 1.0)
    assert closed.op is Op.REPLY
    assert sessions(core) == {"live": 1, "groups": 0, "envs": 0}
    refused = answer(core, alloc_frames(token, 2, 3, env_ids=on(envs, w1), group=envs.group))
    assert_error(refused, "EnvNotOnWorker", 3, "it was closed")


def test_a_closed_groups_answer_still_reaches_its_client(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    w1 = two_workers[0]
    token = hello(core)
    envs = alloc(core, token, 1)
    forwarded = send(core, request(Op.CLOSE, w1, [0], 1, token, envs.group))
    assert isinstance(forwarded, ToWorker)
    assert forwarded.identity == W1
    assert sessions(core)["groups"] == 0
    [answered] = core.on_worker(W1, reply(CLIENT, 1, [0]), 0.1)
    assert isinstance(answered, ToClient)
    assert answered.client == CLIENT


# ---------------------------------------------------------------- the table alone


def test_table_tokens_are_random_16_bytes_and_logs_show_a_prefix() -> None:
    table = SessionTable(lease=10.0, max_envs=None, max_sessions=10)
    first, second = table.open(None, 0.0), table.open(None, 0.0)
    assert len(first.token) == len(second.token) == SESSION_BYTES
    assert first.token != second.token
    assert first.name == first.token[:4].hex()
    assert len(table) == 2


def test_table_group_checks_the_session_and_the_range() -> None:
    table = SessionTable(lease=10.0, max_envs=None, max_sessions=10)
    mine, theirs = table.open(None, 0.0), table.open(None, 0.0)
    group = table.add_group(mine, 100, 10)
    table.add_group(theirs, 110, 5)
    assert (group.id, group.start, group.end, group.placed) == (100, 100, 110, 10)
    assert table.group(mine, 100, np.arange(100, 110)) is group
    assert table.group(mine, 100, None) is group
    assert table.group(mine, 100, ids()) is group
    for bad, outside in (((99,), 99), ((100, 110), 110), ((105, 99, 120), 99)):
        with pytest.raises(NotOwner, match=f"env id {outside} is not in env group 100"):
            table.group(mine, 100, ids(*bad))
    with pytest.raises(NotOwner, match="another client session"):
        table.group(theirs, 100, ids(100))
    assert table.group(mine, 105, ids(105)) is None  # not a group's id
    assert table.group(mine, 7, ids(7)) is None


def test_table_released_ends_a_group_with_its_last_env() -> None:
    table = SessionTable(lease=10.0, max_envs=None, max_sessions=10)
    session = table.open(None, 0.0)
    group = table.add_group(session, 0, 4)
    table.add_group(session, 4, 2)
    assert table.status() == {"live": 1, "groups": 2, "envs": 6}
    table.released(group, 3)
    assert table.status() == {"live": 1, "groups": 2, "envs": 3}
    table.released(group, 1)
    assert table.status() == {"live": 1, "groups": 1, "envs": 2}
    assert table.group(session, 0, ids(0)) is None
    assert list(session.groups) == [4]


def test_table_quota() -> None:
    table = SessionTable(lease=10.0, max_envs=10, max_sessions=10)
    session = table.open(None, 0.0)
    table.check_quota(session, 10)
    table.add_group(session, 0, 6)
    table.check_quota(session, 4)
    with pytest.raises(QuotaExceeded, match="allows 10"):
        table.check_quota(session, 5)
    SessionTable(lease=10.0, max_envs=None, max_sessions=10).check_quota(session, 10**9)


def test_table_find_renews_and_checks_the_key() -> None:
    table = SessionTable(lease=10.0, max_envs=None, max_sessions=10)
    session = table.open(KEY_A, 1.0)
    assert session.lease_until == 11.0
    assert table.find(session.token, KEY_A, 5.0) is session
    assert session.lease_until == 15.0
    for key in (KEY_B, None):
        with pytest.raises(NotOwner, match="another client key"):
            table.find(session.token, key, 9.0)
    assert session.lease_until == 15.0
    with pytest.raises(UnknownSession):
        table.find(secrets.token_bytes(SESSION_BYTES), KEY_A, 9.0)


def test_table_expire_removes_sessions_past_their_lease_and_remembers_them() -> None:
    table = SessionTable(lease=10.0, max_envs=None, max_sessions=10)
    old, young = table.open(None, 0.0), table.open(None, 5.0)
    table.add_group(old, 0, 3)
    assert table.expire(9.9) == []
    assert table.expire(10.0) == [old]
    assert len(table) == 1
    # Its groups stay for the core to close.
    assert table.status() == {"live": 1, "groups": 1, "envs": 0}
    with pytest.raises(LeaseExpired, match="lease expired"):
        table.find(old.token, None, 10.5)
    assert table.find(young.token, None, 10.5) is young
    assert table.expire(15.0) == []


def test_table_remembers_only_the_latest_expired_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker.sessions, "EXPIRED_TOKENS_KEPT", 2)
    table = SessionTable(lease=1.0, max_envs=None, max_sessions=10)
    tokens = [table.open(None, float(t)).token for t in range(3)]
    assert len(table.expire(10.0)) == 3
    with pytest.raises(UnknownSession):
        table.find(tokens[0], None, 10.0)
    for token in tokens[1:]:
        with pytest.raises(LeaseExpired):
            table.find(token, None, 10.0)


def test_table_refuses_sessions_beyond_its_limit() -> None:
    table = SessionTable(lease=1.0, max_envs=None, max_sessions=2)
    table.open(None, 0.0)
    table.open(None, 0.0)
    with pytest.raises(RemoteError, match="2 client sessions are open") as raised:
        table.open(None, 0.0)
    assert type(raised.value) is RemoteError
    table.expire(5.0)
    table.open(None, 5.0)


def test_a_request_after_the_lease_ran_out_is_refused_even_before_the_sweep() -> None:
    table = SessionTable(lease=10.0, max_envs=None, max_sessions=10)
    session = table.open(None, 0.0)
    table.find(session.token, None, 5.0)  # renewed until 15
    with pytest.raises(LeaseExpired):
        table.find(session.token, None, 15.0)
    # Not revived: the sweep still finds it run out.
    assert table.expire(15.5) == [session]


@pytest.mark.parametrize(
    "size", [1, broker.sessions.SMALL_BATCH, broker.sessions.SMALL_BATCH + 1, 1000]
)
def test_the_range_check_holds_for_small_and_large_batches(size: int) -> None:
    table = SessionTable(lease=10.0, max_envs=None, max_sessions=10)
    session = table.open(None, 0.0)
    group = table.add_group(session, 100, size)
    inside = np.arange(100, 100 + size, dtype=np.int64)[::-1].copy()
    assert table.group(session, group.id, inside) is group
    for outside in (99, 100 + size):
        ids = inside.copy()
        ids[len(ids) // 2] = outside
        with pytest.raises(NotOwner, match=f"env id {outside} is not in env group 100"):
            table.group(session, group.id, ids)


# ---------------------------------------------------------------- review findings


def test_create_reaches_only_the_worker_its_env_ids_are_placed_on(
    core: BrokerCore, two_workers: tuple[int, int]
) -> None:
    """Else a client could build its envs on a worker the broker counts as free: past its quota
    and beyond its lease's cleanup."""
    w1, w2 = two_workers
    session = hello(core)
    envs = alloc(core, session, 2)
    mine, other = on(envs, w1), on(envs, w2)
    assert mine and other

    def create(worker: int, request_id: int) -> list[Frame]:
        message = Message(
            Op.CREATE,
            request_id,
            worker=worker,
            env_ids=ids(*mine),
            meta={"env": "echo"},
            session=session,
            group=envs.group,
        )
        return encode(message)

    assert_error(answer(core, create(w2, 5)), "NotOwner", 5, f"not placed on worker {w2}")
    assert isinstance(send(core, create(w1, 6)), ToWorker)


def test_the_broker_route_is_refused_as_a_client_identity(core: BrokerCore) -> None:
    refused = answer(core, encode(Message(Op.HELLO, 3)), client=BROKER_ROUTE)
    assert_error(refused, "ProtocolError", 3, "reserved for the broker")


def test_with_curve_the_quota_is_the_keys_over_all_its_sessions() -> None:
    core = BrokerCore(config(lease=LEASE, max_envs_per_client=10))
    register(core, W1, capacity=100)
    first = hello(core, key=KEY_A)
    second = hello(core, key=KEY_A)
    assert alloc(core, first, 8, key=KEY_A).op is Op.REPLY
    refused = alloc(core, second, 3, key=KEY_A)
    assert_error(refused, "QuotaExceeded", 1, "this client key 11")
    # Another key has its own quota.
    assert alloc(core, hello(core, key=KEY_B), 10, key=KEY_B).op is Op.REPLY


def test_one_key_holds_a_bounded_number_of_sessions() -> None:
    table = SessionTable(lease=10.0, max_envs=None, max_sessions=10**6)
    for _ in range(broker.sessions.SESSIONS_PER_KEY):
        table.open(KEY_A, 0.0)
    with pytest.raises(RemoteError, match="this client key has 1,024 sessions open"):
        table.open(KEY_A, 0.0)
    table.open(KEY_B, 0.0)
    table.open(None, 0.0)
    # Expired sessions give their places back.
    assert len(table.expire(10.0)) == broker.sessions.SESSIONS_PER_KEY + 2
    table.open(KEY_A, 10.0)
