"""Client sessions over real sockets: a group is its maker's alone, leases free the envs of a
client that is gone, quotas bound one client, and a client notices its broker is gone."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import numpy as np
import pytest
import zmq
from echo_env import EchoAction

from bench.faults.cluster import alive
from openenv_zmq import AsyncBatchClient, BatchClient
from openenv_zmq.client.sync import EnvGroup
from openenv_zmq.errors import BrokerLost, EnvNotOnWorker, LeaseExpired, QuotaExceeded
from openenv_zmq.protocol import Message, Op, decode, encode
from tests.processes import REPO_ROOT, Processes, free_port, wait_until

TIMEOUT = 10.0


def ask(socket: zmq.Socket[bytes], message: Message) -> Message:
    socket.send_multipart(encode(message))
    assert socket.poll(int(TIMEOUT * 1000)), f"no answer to {message.op.name}"
    return decode(socket.recv_multipart())


def refused(answer: Message, type_name: str, *text: str) -> None:
    assert answer.op is Op.ERROR, answer
    assert answer.meta["type"] == type_name, answer.meta
    for fragment in text:
        assert fragment in answer.meta["message"], answer.meta


def group_id(group: EnvGroup) -> int:
    # What an attacker would guess: a group's id is its first env id.
    return int(group.env_ids.min())


def test_a_peer_that_guesses_env_ids_cannot_step_read_close_or_move_them(
    procs: Processes,
) -> None:
    broker = procs.broker(workers=2)
    with BatchClient(broker.frontend, connect_timeout=TIMEOUT, timeout=TIMEOUT) as owner:
        group = owner.make("echo", num_envs=8)
        group.reset()
        group.step([EchoAction(message="mine")] * 8)
        ids = group.env_ids
        worker = int(owner.workers()[0]["id"])
        g = group_id(group)
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        stranger = context.socket(zmq.DEALER)
        stranger.connect(broker.frontend)
        try:
            step = Message(
                Op.STEP, 1, worker=worker, env_ids=ids, group=g, parts={"actions": [{}] * 8}
            )
            refused(ask(stranger, step), "ProtocolError", "needs a client session")
            forged = secrets.token_bytes(16)
            refused(ask(stranger, Message(Op.PING, 2, session=forged)), "UnknownSession")

            hello = ask(stranger, Message(Op.HELLO, 3))
            session = hello.meta["session"]
            assert session != forged
            for n, op in enumerate((Op.STEP, Op.RESET, Op.STATE, Op.CLOSE)):
                parts: dict[str, Any] = {"actions": [{}] * 8} if op is Op.STEP else {}
                message = Message(
                    op, 10 + n, worker=worker, env_ids=ids, group=g, session=session, parts=parts
                )
                refused(ask(stranger, message), "NotOwner", f"env group {g} belongs to another")
            move = Message(
                Op.ALLOC,
                20,
                env_ids=ids,
                group=g,
                session=session,
                meta={"env": "echo", "num_envs": 8},
            )
            refused(ask(stranger, move), "NotOwner")

            # Its own group does not stretch to cover the owner's env ids.
            mine = ask(
                stranger,
                Message(Op.ALLOC, 21, session=session, meta={"env": "echo", "num_envs": 1}),
            )
            assert mine.op is Op.REPLY and mine.group is not None
            sneaky = Message(
                Op.STEP,
                22,
                worker=worker,
                env_ids=np.array([mine.group, ids[0]]),
                group=mine.group,
                session=session,
                parts={"actions": [{}] * 2},
            )
            refused(ask(stranger, sneaky), "NotOwner", f"env id {ids[0]} is not in env group")
        finally:
            stranger.close(linger=0)

        # The owner sees nothing changed: one step each, all still there, still its own.
        assert [s.step_count for s in group.state()] == [1] * 8
        result = group.step([EchoAction(message="still mine")] * 8)
        assert not result.errors
        assert [o.echoed_message for o in result.observations] == ["still mine"] * 8


CLIENT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from echo_env import EchoAction
    from openenv_zmq import BatchClient
    from openenv_zmq.errors import LeaseExpired

    client = BatchClient(sys.argv[1], connect_timeout=10, timeout=10)
    group = client.make("echo", num_envs=int(sys.argv[2]))
    group.reset()
    print("ready", flush=True)
    sys.stdin.readline()  # held here: killed, or stopped and continued
    try:
        group.step([EchoAction(message="late")] * len(group.env_ids))
        print("stepped", flush=True)
    except LeaseExpired as exc:
        print("LeaseExpired:", exc, flush=True)
    again = client.make("echo", num_envs=2)
    print("made again", len(again.reset().observations), flush=True)
    """
)


def holding_client(address: str, num_envs: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'envs'}"}
    process = subprocess.Popen(
        [sys.executable, "-c", CLIENT_SCRIPT, address, str(num_envs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def slots_used(address: str) -> int:
    with BatchClient(address, connect_timeout=TIMEOUT) as observer:
        used: int = observer.status()["env_slots"]["used"]
        return used


def test_a_client_killed_holding_envs_has_them_freed_when_its_lease_runs_out(
    procs: Processes,
) -> None:
    lease = 2.0
    broker = procs.broker(workers=2, extra=("--lease", str(lease), "--capacity", "1000"))
    process = holding_client(broker.frontend, 1000)
    assert slots_used(broker.frontend) == 1000
    killed = time.monotonic()
    process.kill()
    process.communicate()  # and its pipes closed
    wait_until(lambda: slots_used(broker.frontend) == 0, lease + TIMEOUT, "the slots to be freed")
    assert time.monotonic() - killed > lease * 0.5, "freed before the lease could run out"
    # The workers closed the envs too: every slot of both is free for a new client.
    with BatchClient(broker.frontend, connect_timeout=TIMEOUT, timeout=TIMEOUT) as client:
        result = client.make("echo", num_envs=2000).reset()
        assert not result.errors and len(result) == 2000


def test_a_stopped_client_finds_its_lease_expired_then_makes_envs_again(
    procs: Processes,
) -> None:
    broker = procs.broker(workers=1, extra=("--lease", "1.5"))
    process = holding_client(broker.frontend, 4)
    process.send_signal(signal.SIGSTOP)  # suspended: not even its heartbeat thread runs
    try:
        wait_until(lambda: slots_used(broker.frontend) == 0, TIMEOUT, "the lease to run out")
    finally:
        process.send_signal(signal.SIGCONT)
    out, _ = process.communicate("go\n", timeout=TIMEOUT)
    lines = out.splitlines()
    assert lines[0].startswith("LeaseExpired:"), out
    assert "its lease expired and its env groups were closed" in lines[0]
    assert lines[1] == "made again 2", out
    assert process.returncode == 0


def test_a_client_busy_for_longer_than_the_lease_keeps_its_envs(procs: Processes) -> None:
    lease = 1.5
    broker = procs.broker(workers=1, extra=("--lease", str(lease)))
    with BatchClient(broker.frontend, connect_timeout=TIMEOUT, timeout=TIMEOUT) as client:
        group = client.make("echo", num_envs=4)
        group.reset()
        time.sleep(lease * 3)  # backprop, a checkpoint: no call, only the heartbeat
        result = group.step([EchoAction(message="after a while")] * 4)
        assert not result.errors
        assert client.status()["sessions"]["envs"] == 4


def test_max_envs_per_client_bounds_each_client_session(procs: Processes) -> None:
    broker = procs.broker(workers=1, extra=("--max-envs-per-client", "10"))
    with (
        BatchClient(broker.frontend, connect_timeout=TIMEOUT, timeout=TIMEOUT) as a,
        BatchClient(broker.frontend, connect_timeout=TIMEOUT, timeout=TIMEOUT) as b,
    ):
        first = a.make("echo", num_envs=8)
        with pytest.raises(QuotaExceeded, match="--max-envs-per-client"):
            a.make("echo", num_envs=3)
        assert b.make("echo", num_envs=10).reset().observations, "another client has its own quota"
        first.close()
        assert len(a.make("echo", num_envs=10).reset().observations) == 10


def test_a_sync_client_notices_a_dead_broker_within_three_heartbeats_and_works_with_the_next(
    procs: Processes,
) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    first = procs.broker(workers=1, bind=address, heartbeat=0.5)
    with BatchClient(address, connect_timeout=TIMEOUT, timeout=60) as client:
        old = client.make("echo", num_envs=4)
        old.reset()
        workers = first.worker_pids()
        first.stop(signal.SIGKILL)
        wait_until(lambda: not any(alive(p) for p in workers), TIMEOUT, "its workers to exit")
        started = time.monotonic()
        with pytest.raises(BrokerLost, match="answered no heartbeat"):
            old.step([EchoAction(message="anyone?")] * 4)
        # Three intervals are 1.5 s; the request's own timeout is 60 s.
        assert time.monotonic() - started < 10
        # EnvPool's pair too: what was sent is forgotten, so the envs may be stepped again.
        old.send([EchoAction(message="anyone?")] * 4)
        with pytest.raises(BrokerLost):
            old.recv()

        procs.broker(workers=1, bind=address)
        new = client.make("echo", num_envs=4)
        assert not new.reset().errors
        stale = old.step([EchoAction(message="stale")] * 4)
        assert {type(e) for e in stale.errors.values()} == {EnvNotOnWorker}


def test_an_async_client_notices_a_dead_broker_and_works_with_the_next(
    procs: Processes,
) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    first = procs.broker(workers=1, bind=address, heartbeat=0.5)

    async def main() -> None:
        async with AsyncBatchClient(address, connect_timeout=TIMEOUT, timeout=60) as client:
            old = await client.make("echo", num_envs=2)
            await old.reset()
            workers = first.worker_pids()
            first.stop(signal.SIGKILL)
            wait_until(lambda: not any(alive(p) for p in workers), TIMEOUT, "workers to exit")
            started = time.monotonic()
            with pytest.raises(BrokerLost):
                await old.step([EchoAction(message="anyone?")] * 2)
            assert time.monotonic() - started < 10
            procs.broker(workers=1, bind=address)
            new = await client.make("echo", num_envs=2)
            assert not (await new.reset()).errors

    asyncio.run(main())


def test_a_lease_expired_answer_is_typed_for_the_client(procs: Processes) -> None:
    """The expired session's own token, sent raw after expiry, gets LeaseExpired by name."""
    broker = procs.broker(workers=1, extra=("--lease", "1.5"))
    socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    socket.connect(broker.frontend)
    try:
        session = ask(socket, Message(Op.HELLO, 1)).meta["session"]
        # Watched with STATUS, which needs no session (a PING with this one would renew it).
        wait_until(
            lambda: ask(socket, Message(Op.STATUS, 3)).meta["status"]["sessions"]["live"] == 0,
            TIMEOUT,
            "every session's lease to run out",
        )
        refused(ask(socket, Message(Op.PING, 2, session=session)), LeaseExpired.__name__)
    finally:
        socket.close(linger=0)


def test_a_session_outlives_its_connection(procs: Processes) -> None:
    """What a TCP reconnect looks like to the broker: the same token from a new connection."""
    broker = procs.broker(workers=1)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    first = context.socket(zmq.DEALER)
    first.connect(broker.frontend)
    try:
        session = ask(first, Message(Op.HELLO, 1)).meta["session"]
        made = ask(
            first, Message(Op.ALLOC, 2, session=session, meta={"env": "echo", "num_envs": 2})
        )
        assert made.op is Op.REPLY, made
        [worker] = set(made.parts["workers"].tolist())
        create = Message(
            Op.CREATE,
            3,
            worker=worker,
            env_ids=made.env_ids,
            group=made.group,
            session=session,
            meta={"env": "echo"},
        )
        assert ask(first, create).op is Op.REPLY
    finally:
        first.close(linger=0)
    second = context.socket(zmq.DEALER)
    second.connect(broker.frontend)
    try:
        reset = Message(
            Op.RESET, 4, worker=worker, env_ids=made.env_ids, group=made.group, session=session
        )
        answer = ask(second, reset)
        assert answer.op is Op.REPLY, answer
        assert answer.parts["errors"] == []
    finally:
        second.close(linger=0)
