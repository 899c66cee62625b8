"""SessionPool and AsyncSessionPool over the in-process transport (no sockets): OpenEnv's client
surface, steps coalesced into batches, waiting for a free session, closing."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from echo_env import EchoAction, EchoObservation

from broker.inprocess import InProcessBroker
from openenv_zmq import AsyncSessionPool, BatchClient, SessionPool, State
from openenv_zmq.errors import ActionValidationError, ClientError, ClosedError, NoFreeSession
from openenv_zmq.pool import AsyncPoolSession, PoolSession

WAIT = 10.0
"""Seconds a test waits for what must happen at once (bounds a hang, never reached)."""


@pytest.fixture
def broker() -> Iterator[InProcessBroker]:
    with InProcessBroker(["echo"]) as inprocess:
        yield inprocess


def step_requests(broker: InProcessBroker) -> int:
    """STEP requests the broker forwarded so far (one per batch: one worker)."""
    with BatchClient(transport=broker.connect()) as client:
        count: int = client.status()["metrics"]["requests"]["step"]
        return count


def with_async_pool(
    broker: InProcessBroker, size: int, test: Callable[[AsyncSessionPool], Awaitable[None]]
) -> None:
    async def main() -> None:
        pool = AsyncSessionPool(env="echo", size=size, transport=broker.connect_async())
        async with pool:
            await asyncio.wait_for(test(pool), WAIT)

    asyncio.run(main())


def test_coroutines_step_their_own_sessions_in_shared_batches(broker: InProcessBroker) -> None:
    async def test(pool: AsyncSessionPool) -> None:
        async def episode(i: int) -> tuple[float | None, int]:
            async with pool.session() as env:
                first = await env.reset(seed=i)
                assert first.observation.echoed_message == "Echo environment ready!"
                result = await env.step(EchoAction(message="x" * i))
                assert isinstance(result.observation, EchoObservation)
                assert result.done is False and result.observation.message_length == i
                state = await env.state()
                assert isinstance(state, State) and state.step_count == 1
                return result.reward, env.env_id

        outcomes = await asyncio.gather(*(episode(i) for i in range(8)))
        assert [reward for reward, _ in outcomes] == pytest.approx([i * 0.1 for i in range(8)])
        assert len({env_id for _, env_id in outcomes}) == 8
        assert pool.in_use == 0

    with_async_pool(broker, 8, test)
    assert step_requests(broker) <= 2  # 8 steps, sent together (or a lone first and the rest)


def test_an_env_error_raises_in_its_own_session_only(broker: InProcessBroker) -> None:
    async def test(pool: AsyncSessionPool) -> None:
        sessions = [await pool.acquire() for _ in range(3)]
        actions: list[Any] = [{"message": "a"}, {"message": 5}, EchoAction(message="c")]
        outcomes = await asyncio.gather(
            *(s.step(a) for s, a in zip(sessions, actions, strict=True)), return_exceptions=True
        )
        assert isinstance(outcomes[1], ActionValidationError)
        assert [getattr(o, "observation", None) for o in (outcomes[0], outcomes[2])] == [
            EchoObservation(echoed_message="a", message_length=1, reward=0.1),
            EchoObservation(echoed_message="c", message_length=1, reward=0.1),
        ]
        # the failing session steps on
        assert (await sessions[1].step({"message": "ok"})).observation.echoed_message == "ok"

    with_async_pool(broker, 3, test)


def test_a_session_beyond_size_waits_and_gets_a_fresh_episode(broker: InProcessBroker) -> None:
    async def test(pool: AsyncSessionPool) -> None:
        held = await pool.acquire()
        await held.step({"message": "mine"})
        episode = (await held.state()).episode_id
        with pytest.raises(NoFreeSession, match="all 1 sessions of the 'echo' pool"):
            await pool.acquire(timeout=0.01)
        waiting = asyncio.ensure_future(pool.acquire(timeout=WAIT))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        await held.close()
        await held.close()  # closing twice does nothing
        with pytest.raises(ClosedError, match="went back to the pool"):
            await held.step({"message": "again"})
        successor = await waiting
        assert successor.env_id == held.env_id
        state = await successor.state()  # its first call resets the env
        assert state.step_count == 0 and state.episode_id != episode

    with_async_pool(broker, 1, test)


def test_closing_the_pool_ends_waits_and_later_calls(broker: InProcessBroker) -> None:
    async def main() -> None:
        pool = AsyncSessionPool(env="echo", size=1, transport=broker.connect_async())
        async with pool:
            held = await pool.acquire()
            waiting = asyncio.ensure_future(pool.acquire(timeout=WAIT))
            await asyncio.sleep(0.01)
        with pytest.raises(ClosedError):
            await asyncio.wait_for(waiting, WAIT)
        with pytest.raises(ClosedError):
            await held.step({"message": "late"})
        await held.close()
        await pool.close()

    asyncio.run(main())


def test_threads_step_their_own_sessions_in_shared_batches(broker: InProcessBroker) -> None:
    threads, steps = 16, 5
    rewards: list[list[float | None]] = []
    barrier = threading.Barrier(threads)

    def rollout(pool: SessionPool, i: int) -> None:
        with pool.session() as env:
            assert isinstance(env, PoolSession)
            env.reset()
            barrier.wait(WAIT)  # all step at once, as a trainer's rollout threads do
            rewards.append([env.step(EchoAction(message="x" * i)).reward for _ in range(steps)])

    with SessionPool(env="echo", size=threads, transport=broker.connect_async()) as pool:
        workers = [threading.Thread(target=rollout, args=(pool, i)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(WAIT)
        assert pool.in_use == 0
    assert sorted(rewards) == [pytest.approx([i * 0.1] * steps) for i in range(threads)]
    # Steps arriving while the loop is busy share a batch; here a batch returns at once, so how
    # many do is up to the threads' timing (8 to 33 batches in trials), never one per step.
    assert step_requests(broker) < threads * steps


def test_the_sync_pool_serves_coroutines_of_another_loop(broker: InProcessBroker) -> None:
    with SessionPool(env="echo", size=2, transport=broker.connect_async()) as pool:

        async def coroutine() -> None:
            async with pool.session() as env:
                assert isinstance(env, AsyncPoolSession)
                results = await asyncio.gather(
                    env.step({"message": "ab"}), env.step({"message": "abc"})
                )
                assert [r.observation.message_length for r in results] == [2, 3]
                assert (await env.state()).step_count == 2

        asyncio.run(asyncio.wait_for(coroutine(), WAIT))
        with pool.session() as env:
            assert env.step({"message": "sync"}).observation.echoed_message == "sync"
            with pytest.raises(NoFreeSession), pool.session(timeout=0), pool.session(timeout=0):
                pass
    with pytest.raises(ClosedError):
        env.step({"message": "after close"})
    env.close()  # after the pool closed: nothing to give back
    pool.close()


def test_an_array_env_is_refused() -> None:
    async def main() -> None:
        with InProcessBroker(["cartpole"]) as inprocess:
            pool = AsyncSessionPool(env="cartpole", size=2, transport=inprocess.connect_async())
            with pytest.raises(ClientError, match="'cartpole' is an array env"):
                await pool.open()

    asyncio.run(main())


def test_closing_the_sync_pool_ends_the_waits_of_its_threads(broker: InProcessBroker) -> None:
    pool = SessionPool(env="echo", size=1, transport=broker.connect_async())
    held = pool.acquire()
    outcomes: list[BaseException] = []

    def wait_for_a_session() -> None:
        try:
            pool.acquire(timeout=WAIT)
        except BaseException as exc:
            outcomes.append(exc)

    waiting = threading.Thread(target=wait_for_a_session)
    waiting.start()
    waiting.join(0.05)  # waiting in the pool by now, or it finds the pool closed: either way
    pool.close()
    waiting.join(WAIT)
    assert [type(o) for o in outcomes] == [ClosedError]
    held.close()


@pytest.mark.parametrize(
    ("sync", "aio"), [(SessionPool, AsyncSessionPool), (PoolSession, AsyncPoolSession)]
)
def test_the_sync_and_async_pools_have_one_api(sync: type, aio: type) -> None:
    # as the clients' (tests/unit/test_client_parity.py): async exactly where the sync one blocks
    context = {"__enter__": "__aenter__", "__exit__": "__aexit__"}
    async_only = {"open"}  # an asyncio pool cannot open in its constructor
    not_awaited = {"session"}  # a context manager for 'with' / 'async with'

    def public(cls: type) -> dict[str, Any]:
        return {
            context.get(name, name): member
            for name, member in inspect.getmembers(cls)
            if not name.startswith("_") or name in context or name in context.values()
        }

    sync_members, aio_members = public(sync), public(aio)
    assert set(sync_members) == set(aio_members) - async_only
    for name, member in sync_members.items():
        twin = aio_members[name]
        if isinstance(member, property) or not callable(member):
            continue
        parameters = [
            [(p.name, p.kind, p.default) for p in inspect.signature(m).parameters.values()]
            for m in (member, twin)
        ]
        assert parameters[0] == parameters[1], name
        assert not inspect.iscoroutinefunction(member), name
        assert inspect.iscoroutinefunction(twin) == (name not in not_awaited), name
