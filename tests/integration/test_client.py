"""A trainer's view: BatchClient and AsyncBatchClient against a real broker and workers."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest
from echo_env import EchoAction, EchoObservation

from openenv_zmq import AsyncBatchClient, BatchClient, State
from openenv_zmq.client.zmq_transport import AsyncZmqTransport, ZmqTransport
from openenv_zmq.errors import (
    ActionValidationError,
    AlreadyPendingCall,
    BatchSizeMismatch,
    BrokerUnreachable,
    ClientError,
    ClosedError,
    EnvExecutionError,
    EnvIdsNotInGroup,
    NoPendingCall,
    NoWorkerAvailable,
    RequestTimeout,
    TransportError,
)
from openenv_zmq.protocol import Message, Op
from openenv_zmq.sockets import HIGH_WATER_MARK
from tests.processes import Processes, free_port

FRAGILE = "tests.integration.fixture_envs:FragileEchoEnv"
SLOW = "tests.integration.fixture_envs:SlowEchoEnv"


def test_make_reset_step_state_with_1024_envs(procs: Processes) -> None:
    broker = procs.broker(workers=2)
    with BatchClient(broker.frontend) as client:
        envs = client.make("echo", num_envs=1024)
        assert len(envs) == 1024
        r = envs.reset(seed=0)
        assert r.env_ids.dtype == np.int64 and len(r) == 1024
        assert all(isinstance(o, EchoObservation) for o in r.observations)
        assert {o.echoed_message for o in r.observations} == {"Echo environment ready!"}
        assert r.rewards.dtype == np.float32 and not r.rewards.any()

        r = envs.step([EchoAction(message="hi")] * 1024)
        np.testing.assert_allclose(r.rewards, 0.2, rtol=1e-6)
        assert r.terminated.dtype == np.bool_ and not r.dones.any() and not r.errors
        assert r.observations[17].echoed_message == "hi"

        subset = r.env_ids[:10][::-1]
        r = envs.step([EchoAction(message=f"x{i}") for i in range(10)], env_ids=subset)
        assert r.env_ids.tolist() == subset.tolist()
        assert [o.echoed_message for o in r.observations] == [f"x{i}" for i in range(10)]

        states = envs.state()
        assert all(isinstance(s, State) for s in states)
        counts = {int(i): s.step_count for i, s in zip(envs.env_ids, states, strict=True)}
        assert {counts[int(i)] for i in subset} == {2}
        assert sum(c == 1 for c in counts.values()) == 1014

        placed = client.status()
        assert sorted(w["used"] for w in placed["workers"]) == [512, 512]
        assert sum(w["steps_served"] for w in placed["workers"]) == 1024 + 10
        envs.close()
        assert client.status()["env_slots"]["used"] == 0


def test_env_and_num_envs_in_the_constructor(procs: Processes) -> None:
    broker = procs.broker(workers=1, transport="ipc")
    with BatchClient(broker.frontend, env="echo", num_envs=8) as client:
        r = client.reset(seed=3)
        assert len(r) == 8
        r = client.step([{"message": "abc"}] * 8)
        np.testing.assert_allclose(r.rewards, 0.3, rtol=1e-6)
        assert [s.step_count for s in client.state()] == [1] * 8


def test_reset_takes_per_env_seeds_and_kwargs(procs: Processes) -> None:
    broker = procs.broker(workers=2)
    with BatchClient(broker.frontend) as client:
        envs = client.make("echo", num_envs=4)
        rows = [{"episode_id": f"row-{i}"} for i in range(4)]
        envs.reset(seed=[1, 2, None, 4], kwargs=rows)
        assert [s.episode_id for s in envs.state()] == [f"row-{i}" for i in range(4)]
        envs.reset(kwargs={"episode_id": "same", "not_a_reset_argument": 1})
        assert {s.episode_id for s in envs.state()} == {"same"}
        with pytest.raises(BatchSizeMismatch, match="3 seeds for 4 env ids"):
            envs.reset(seed=[1, 2, 3])
        with pytest.raises(BatchSizeMismatch, match="2 kwargs for 4 env ids"):
            envs.reset(kwargs=rows[:2])


def test_send_recv_returns_sub_batches_as_they_finish(procs: Processes) -> None:
    broker = procs.broker(workers=2)
    with BatchClient(broker.frontend) as client:
        envs = client.make("echo", num_envs=64)
        envs.reset()
        with pytest.raises(NoPendingCall):
            envs.recv(timeout=1)
        envs.send([EchoAction(message="a")] * 32, env_ids=envs.env_ids[:32])
        with pytest.raises(AlreadyPendingCall, match="still in flight"):
            envs.send([EchoAction(message="a")], env_ids=envs.env_ids[:1])
        envs.send([EchoAction(message="bb")] * 32, env_ids=envs.env_ids[32:])
        seen: list[int] = []
        for _ in range(4):
            if len(seen) == 64:
                break
            r = envs.recv(timeout=10)
            assert len(r) >= 1 and not r.errors
            seen += r.env_ids.tolist()
        assert sorted(seen) == envs.env_ids.tolist()
        r = envs.step([EchoAction(message="ok")] * 64)
        assert not r.errors


def test_async_client_serves_concurrent_coroutines(procs: Processes) -> None:
    broker = procs.broker(workers=2)

    async def main() -> None:
        async with AsyncBatchClient(broker.frontend, env="echo", num_envs=16) as client:
            await client.reset(seed=0)
            other = await client.make("echo", num_envs=16)
            await other.reset()
            a, b = await asyncio.gather(
                client.step([EchoAction(message="a")] * 16),
                other.step([EchoAction(message="bbbb")] * 16),
            )
            np.testing.assert_allclose(a.rewards, 0.1, rtol=1e-6)
            np.testing.assert_allclose(b.rewards, 0.4, rtol=1e-6)
            await other.send([EchoAction(message="c")] * 16)
            got = 0
            while got < 16:
                got += len(await other.recv(timeout=10))
            assert [s.step_count for s in await other.state()] == [2] * 16
            assert (await client.status())["env_slots"]["used"] == 32

    asyncio.run(main())


def test_async_timeout_names_the_late_requests_and_the_client_carries_on(
    procs: Processes,
) -> None:
    broker = procs.broker(workers=1, envs=("echo", SLOW))

    async def main() -> None:
        async with AsyncBatchClient(broker.frontend, timeout=0.3) as client:
            slow = await client.make(SLOW, num_envs=1, delay=1.0)
            fast = await client.make("echo", num_envs=1)
            await fast.reset()
            await slow.reset()
            with pytest.raises(RequestTimeout, match=r"1 of 1 request\(s\) .* within 0.3 s"):
                await slow.step([EchoAction(message="late")])
            # the premise: the slow step is still out when the client gives up on it
            assert (await client.status())["in_flight"] == 1
            # the one worker answers late; once the broker has passed that answer on (and the
            # client dropped it), the next call gets its own
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while (await client.status())["in_flight"]:
                assert loop.time() < deadline, "the late answer never came back"
                await asyncio.sleep(0.05)
            step = await fast.step([EchoAction(message="on time")])
            assert step.observations[0].echoed_message == "on time"

    asyncio.run(main())


def test_misuse_gets_clear_errors(procs: Processes) -> None:
    broker = procs.broker(workers=1)
    with BatchClient(broker.frontend) as client:
        envs = client.make("echo", num_envs=4)
        envs.reset()
        with pytest.raises(BatchSizeMismatch, match="3 actions for 4 env ids"):
            envs.step([EchoAction(message="x")] * 3)
        with pytest.raises(EnvIdsNotInGroup, match=r"\[999999\]"):
            envs.step([EchoAction(message="x")], env_ids=[999999])
        with pytest.raises(NoWorkerAvailable, match="no live worker hosts env 'nope'"):
            client.make("nope", num_envs=1)
        with pytest.raises(NoWorkerAvailable, match="4097"):
            client.make("echo", num_envs=4097)
        with pytest.raises(ClientError, match="no default env group"):
            client.step([])
        envs.close()
        with pytest.raises(ClosedError):
            envs.step([EchoAction(message="x")] * 4)
    with pytest.raises(ClosedError):
        client.make("echo", num_envs=1)


def test_a_failing_env_fails_only_its_slot(procs: Processes) -> None:
    broker = procs.broker(workers=2, envs=("echo", FRAGILE))
    with BatchClient(broker.frontend) as client:
        envs = client.make(FRAGILE, num_envs=6)
        envs.reset()
        actions = [EchoAction(message="ok")] * 6
        actions[2] = EchoAction(message="boom")
        r = envs.step(actions)
        bad = int(envs.env_ids[2])
        assert set(r.errors) == {bad}
        error = r.errors[bad]
        assert isinstance(error, EnvExecutionError)
        assert error.original_type == "ZeroDivisionError" and "boom was sent" in str(error)
        assert "ZeroDivisionError" in error.remote_traceback
        assert r.dones.tolist() == [False, False, True, False, False, False]
        assert r.observations[2] is None and r.observations[3].echoed_message == "ok"

        r = envs.step([{"message": 123}] + [{"message": "fine"}] * 5)
        first = int(envs.env_ids[0])
        assert isinstance(r.errors[first], ActionValidationError)
        assert "valid string" in str(r.errors[first])
        assert len(r.errors) == 1
        assert r.observations[1].echoed_message == "fine"


def test_worker_command_refuses_an_env_it_cannot_import(procs: Processes) -> None:
    broker = procs.broker(workers=0)
    worker = procs.worker(broker.backend, envs=("no_such_module:Env",))
    assert worker.wait(30) == 2  # a usage error, as for any other CLI mistake


def test_unreachable_broker_raises_after_the_connect_timeout() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BrokerUnreachable, match=f"127.0.0.1:{port} within 0.3 s"):
        BatchClient(f"tcp://127.0.0.1:{port}", connect_timeout=0.3)

    async def main() -> None:
        with pytest.raises(BrokerUnreachable):
            async with AsyncBatchClient(f"tcp://127.0.0.1:{port}", connect_timeout=0.3):
                pass

    asyncio.run(main())


def test_wait_for_workers_lists_live_hosts_or_says_how_many_joined(procs: Processes) -> None:
    broker = procs.broker(workers=2)
    with BatchClient(broker.frontend) as client:
        hosts = client.wait_for_workers(2, env="echo", timeout=10)
        assert sorted(w["name"] for w in hosts) == ["local-0", "local-1"]
        assert client.workers(env="nope") == []
        with pytest.raises(NoWorkerAvailable, match="0 of 1 workers hosting 'nope' joined"):
            client.wait_for_workers(1, env="nope", timeout=0.2)


def test_a_full_send_queue_is_a_transport_error_in_both_transports() -> None:
    """Nobody listens, so requests queue up to the high-water mark; the next send is refused at
    once and nothing of it stays awaited."""
    address = f"tcp://127.0.0.1:{free_port()}"
    ping = [Message(Op.PING)] * 1_000
    rounds = 4 * HIGH_WATER_MARK // len(ping)  # the queue holds at most two high-water marks
    sent: list[int] = []

    def fill(transport: ZmqTransport) -> None:
        for _ in range(rounds):
            sent.extend(transport.send(ping))

    sync = ZmqTransport(address)
    try:
        with pytest.raises(TransportError, match=r"send queue to .* is full"):
            fill(sync)
        assert sync._table.awaited == set(sent)
    finally:
        sync.close()

    async def fill_async(transport: AsyncZmqTransport) -> None:
        for _ in range(rounds):
            sent.extend(await transport.send(ping))

    async def main() -> None:
        transport = AsyncZmqTransport(address)
        try:
            with pytest.raises(TransportError, match=r"send queue to .* is full"):
                await fill_async(transport)
            assert transport._table.awaited == set(transport._waiters) == set(sent)
        finally:
            await transport.close()

    sent.clear()
    asyncio.run(main())


def test_an_async_transport_moves_to_a_new_event_loop_and_closes_twice(procs: Processes) -> None:
    broker = procs.broker(workers=1)
    transport = AsyncZmqTransport(broker.frontend)

    async def ping() -> Op:
        [answer] = await transport.exchange([Message(Op.PING)], timeout=10)
        return answer.op

    assert asyncio.run(ping()) is Op.REPLY
    assert asyncio.run(ping()) is Op.REPLY  # another loop: the reader follows

    async def close_twice() -> None:
        await transport.close()
        await transport.close()

    asyncio.run(close_twice())
