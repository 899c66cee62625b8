"""BatchClient and AsyncBatchClient over the in-process transport: real broker and worker cores,
no sockets, no processes."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
from echo_env import EchoAction, EchoObservation

from broker.inprocess import InProcessBroker
from openenv_zmq import AsyncBatchClient, BatchClient, State
from openenv_zmq.errors import (
    ActionValidationError,
    AlreadyPendingCall,
    ClientError,
    ClosedError,
    EnvIdsNotInGroup,
    MessageTooLarge,
    NoPendingCall,
    NoWorkerAvailable,
    SessionLost,
)
from openenv_zmq.protocol import Limits
from tests.unit.worker_envs import UndeclaredObservation


@pytest.fixture
def broker() -> Iterator[InProcessBroker]:
    broker = InProcessBroker(["echo"], workers=2, capacity=64)
    yield broker
    broker.close()


def test_workers_register_through_ready_and_welcome(broker: InProcessBroker) -> None:
    with BatchClient(transport=broker.connect()) as client:
        workers = client.workers("echo")
        assert client.address == "inprocess://broker"
    assert sorted(w["name"] for w in workers) == ["inprocess-0", "inprocess-1"]
    assert {w["capacity"] for w in workers} == {64}


def test_make_reset_step_state_close(broker: InProcessBroker) -> None:
    with BatchClient(transport=broker.connect()) as client:
        envs = client.make("echo", num_envs=8)
        r = envs.reset(seed=0)
        assert all(isinstance(o, EchoObservation) for o in r.observations)
        assert sorted(w["used"] for w in client.workers()) == [4, 4]  # the premise: 2 workers
        subset = envs.env_ids[[6, 1, 3]]
        r = envs.step([EchoAction(message=m) for m in ("a", "bb", "ccc")], env_ids=subset)
        assert r.env_ids.tolist() == subset.tolist()
        assert [o.echoed_message for o in r.observations] == ["a", "bb", "ccc"]
        np.testing.assert_allclose(r.rewards, [0.1, 0.2, 0.3], rtol=1e-6)
        states = envs.state(env_ids=subset)
        assert all(isinstance(s, State) and s.step_count == 1 for s in states)
        envs.close()
        assert client.status()["env_slots"]["used"] == 0
        with pytest.raises(ClosedError):
            envs.step([EchoAction(message="x")] * 8)


def test_send_recv_keeps_env_ids_in_flight_until_received(broker: InProcessBroker) -> None:
    with BatchClient(transport=broker.connect(), env="echo", num_envs=8) as client:
        client.reset()
        with pytest.raises(NoPendingCall):
            client.recv()
        first, rest = client.envs.env_ids[:3], client.envs.env_ids[3:]
        client.send([EchoAction(message="a")] * 3, env_ids=first)
        with pytest.raises(AlreadyPendingCall, match=str(first[0])):
            client.step([EchoAction(message="b")], env_ids=first[:1])
        client.send([EchoAction(message="b")] * 5, env_ids=rest)
        seen: list[int] = []
        while len(seen) < 8:
            seen += client.recv().env_ids.tolist()
        assert sorted(seen) == client.envs.env_ids.tolist()
        with pytest.raises(NoPendingCall):
            client.recv()


def test_as_dicts_returns_the_decoded_rows(broker: InProcessBroker) -> None:
    with BatchClient(transport=broker.connect(), env="echo", num_envs=2, as_dicts=True) as client:
        r = client.reset()
        assert r.observations[0]["echoed_message"] == "Echo environment ready!"
        r = client.step([{"message": "hi"}] * 2)
        assert r.observations[0] == {
            "done": False,
            "reward": pytest.approx(0.2),
            "metadata": {},
            "echoed_message": "hi",
            "message_length": 2,
        }
        assert isinstance(client.state()[0], dict)


def test_a_refused_action_carries_pydantic_errors(broker: InProcessBroker) -> None:
    with BatchClient(transport=broker.connect(), env="echo", num_envs=2) as client:
        client.reset()
        r = client.step([{"msg": "wrong"}, {"message": "fine"}])
        error = r.errors[int(client.envs.env_ids[0])]
        assert isinstance(error, ActionValidationError)
        kinds = {(e["type"], tuple(e["loc"])) for e in error.errors}
        assert kinds == {("missing", ("message",)), ("extra_forbidden", ("msg",))}
        assert r.observations[1].echoed_message == "fine"


def test_a_lost_worker_s_envs_are_placed_again_on_reset(broker: InProcessBroker) -> None:
    with BatchClient(transport=broker.connect(), env="echo", num_envs=4) as client:
        client.reset()
        broker.remove_worker("inprocess-0")
        r = client.step([EchoAction(message="x")] * 4)
        lost = {i for i, e in r.errors.items() if isinstance(e, SessionLost)}
        assert len(lost) == 2  # the premise: half the envs lived on the removed worker
        r = client.reset()
        assert not r.errors
        assert [w["used"] for w in client.workers()] == [4]
        assert not client.step([EchoAction(message="y")] * 4).errors


def test_misuse_gets_clear_errors(broker: InProcessBroker) -> None:
    with pytest.raises(ClientError, match="either a broker address or a transport"):
        BatchClient()
    transport = broker.connect()
    with pytest.raises(ClientError, match="either a broker address or a transport"):
        BatchClient("tcp://127.0.0.1:1", transport=transport)
    transport.close()
    with BatchClient(transport=broker.connect()) as client:
        envs = client.make("echo", num_envs=2)
        with pytest.raises(EnvIdsNotInGroup, match=r"\[999\]"):
            envs.step([EchoAction(message="x")], env_ids=[999])
        with pytest.raises(NoWorkerAvailable, match="no live worker hosts env 'nope'"):
            client.make("nope")
        with pytest.raises(ClientError, match="no default env group"):
            client.step([])
        with pytest.raises(
            ClientError, match="autoreset must be one of 'disabled', 'next_step', 'same_step'"
        ):
            client.make("echo", autoreset="bogus")
    with pytest.raises(ClosedError):
        client.make("echo")


def test_groups_and_results_have_short_reprs(broker: InProcessBroker) -> None:
    with BatchClient(transport=broker.connect()) as client:
        envs = client.make("echo", num_envs=64, autoreset="next_step")
        first, last = envs.env_ids[[0, -1]].tolist()
        assert repr(envs) == f"<EnvGroup 'echo' x64, env ids {first}..{last}, next_step>"
        envs.reset()
        result = envs.step([EchoAction(message="x")] * 64)
        assert repr(result) == "<BatchResult of 64 envs: observations 64 rows, 0 ended, 0 failed>"
        envs.close()
        assert repr(envs).endswith(", closed>")


def test_async_client_serves_concurrent_coroutines(broker: InProcessBroker) -> None:
    async def main() -> None:
        transport = broker.connect_async()
        async with AsyncBatchClient(transport=transport, env="echo", num_envs=4) as client:
            other = await client.make("echo", num_envs=4, as_dicts=True)
            await asyncio.gather(client.reset(seed=0), other.reset())
            a, b = await asyncio.gather(
                client.step([EchoAction(message="a")] * 4),
                other.step([EchoAction(message="bbbb")] * 4),
            )
            np.testing.assert_allclose(a.rewards, 0.1, rtol=1e-6)
            assert [o["echoed_message"] for o in b.observations] == ["bbbb"] * 4
            await other.send([EchoAction(message="c")] * 4)
            got = 0
            while got < 4:
                got += len(await other.recv())
            assert [s["step_count"] for s in await other.state()] == [2] * 4
            assert (await client.status())["env_slots"]["used"] == 8
        assert client.envs.closed and other.closed

    asyncio.run(main())


def test_an_openenv_style_env_without_declared_types_answers_with_its_own_models() -> None:
    # Before: the client rebuilt the base Observation from the wire and refused the extra fields.
    with (
        InProcessBroker(["tests.unit.worker_envs:UndeclaredEnv"]) as broker,
        BatchClient(transport=broker.connect()) as client,
    ):
        envs = client.make("tests.unit.worker_envs:UndeclaredEnv", num_envs=2)
        r = envs.reset()
        assert type(r.observations[0]) is UndeclaredObservation
        assert r.observations[0].board == [".", ".", "."]
        r = envs.step([{}, {}])
        r.raise_for_errors()
        assert [o.legal for o in r.observations] == [[1, 2], [1, 2]]
        assert r.rewards.tolist() == [1.0, 1.0]
        assert [s.step_count for s in envs.state()] == [1, 1]


def test_reset_with_one_big_dict_encodes_it_once_and_fails_fast() -> None:
    broker = InProcessBroker(["echo"], workers=1, capacity=64)
    limits = Limits(max_message_bytes=16 * 2**20)
    try:
        with BatchClient(transport=broker.connect(limits=limits)) as client:
            envs = client.make("echo", num_envs=64)
            big = {"blob": "x" * 2**20}  # 64 MiB for 64 envs, over the 16 MiB limit
            tracemalloc.start()
            try:
                with pytest.raises(MessageTooLarge, match=r"over the limit of 16777216"):
                    envs.reset(kwargs=big)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak < 8 * 2**20, f"{peak} bytes allocated: more than one encoding of the dict"
            shared = {"blob": "y" * 2**17}  # 8 MiB for all: under the limit, and it arrives
            r = envs.reset(kwargs=shared)
            assert not r.errors
            assert envs.step([EchoAction(message="a")] * 64).errors == {}
    finally:
        broker.close()


@pytest.mark.parametrize("big_first", [True, False])
def test_send_with_one_sub_batch_over_the_limit_sends_none(big_first: bool) -> None:
    # Before: send() sent the sub-batches one by one, so a later one over the limit raised
    # after the earlier ones had gone: envs stepped that no recv() was waiting for.
    broker = InProcessBroker(["echo"], workers=2, capacity=4)
    limits = Limits(max_message_bytes=2**16)
    try:
        with BatchClient(transport=broker.connect(limits=limits)) as client:
            envs = client.make("echo", num_envs=2)  # one env on each worker
            envs.reset()
            big, small = EchoAction(message="x" * 2**16), EchoAction(message="small")
            with pytest.raises(MessageTooLarge):
                envs.send([big, small] if big_first else [small, big])
            assert [s.step_count for s in envs.state()] == [0, 0]
            with pytest.raises(NoPendingCall):
                envs.recv(timeout=0.1)
            envs.send([small, small])
            assert not envs.recv(timeout=5).errors
    finally:
        broker.close()
