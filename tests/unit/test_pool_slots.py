"""SlotPool and its batching, over the in-process transport (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from broker.core import BrokerConfig
from broker.inprocess import InProcessBroker
from openenv_zmq import AsyncBatchClient, BatchResult
from openenv_zmq.errors import (
    ActionValidationError,
    BrokerLost,
    ClosedError,
    MessageTooLarge,
    ProtocolError,
)
from openenv_zmq.pool.slots import SlotPool
from openenv_zmq.protocol import Limits

BROKER_MESSAGE_BYTES = 2**20


class CountingPool(SlotPool):
    """Records the size of every batched step call it sends."""

    batches: list[int]

    async def _send_steps(self, slots: list[int], actions: list[dict[str, Any]]) -> BatchResult:
        self.batches.append(len(slots))
        return await super()._send_steps(slots, actions)


def with_pool(
    max_sessions: int,
    test: Callable[[CountingPool], Awaitable[None]],
    env: str = "echo",
    **broker: Any,
) -> None:
    """Run ``test`` on a pool of ``max_sessions`` slots of ``env`` on an in-process broker,
    its observations and states as dicts (as the gateway makes it)."""
    inprocess = InProcessBroker([env], **broker)

    async def main() -> None:
        async with AsyncBatchClient(transport=inprocess.connect_async()) as client:
            pool = await CountingPool.open(client, env, max_sessions, as_dicts=True)
            pool.batches = []
            try:
                await test(pool)
            finally:
                await pool.close()

    try:
        asyncio.run(main())
    finally:
        inprocess.close()


def take_all(pool: SlotPool) -> list[int]:
    slots = [s for s in (pool.acquire() for _ in range(pool.max_sessions)) if s is not None]
    assert len(slots) == pool.max_sessions and pool.acquire() is None
    return slots


def test_many_sessions_few_batches() -> None:
    async def test(pool: CountingPool) -> None:
        slots = take_all(pool)
        await asyncio.gather(*(pool.reset(s, seed=1) for s in slots))
        observations = await asyncio.gather(
            *(pool.step(s, {"message": "x" * i}) for i, s in enumerate(slots))
        )
        assert [o["message_length"] for o in observations] == list(range(16))
        assert sum(pool.batches) == 16 and len(pool.batches) <= 2
        with pytest.raises(ActionValidationError):
            await pool.step(slots[0], {"message": 5})
        pool.release(slots[0])
        assert pool.acquire() == slots[0]
        # a reused slot starts a fresh episode for its new session
        assert (await pool.state(slots[0]))["step_count"] == 0

    with_pool(16, test, workers=2)


def test_closing_after_the_broker_is_gone_is_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    # A gateway stopped with its broker (Ctrl-C to both) logged this error and a traceback.
    async def test(pool: CountingPool) -> None:
        async def broker_gone() -> None:
            raise BrokerLost("the broker answered no heartbeat for 2.5 s")

        monkeypatch.setattr(pool.group, "close", broker_gone)
        await pool.close()

    with_pool(1, test)


def test_observations_and_states_are_forwarded_as_dicts() -> None:
    async def test(pool: CountingPool) -> None:
        [slot] = take_all(pool)
        observation = await pool.step(slot, {"message": "hi"})
        assert observation == {
            "done": False,
            "reward": pytest.approx(0.2),
            "metadata": {},
            "echoed_message": "hi",
            "message_length": 2,
        }
        assert (await pool.state(slot))["step_count"] == 1

    with_pool(1, test)


def test_an_oversized_request_fails_alone() -> None:
    async def test(pool: CountingPool) -> None:
        slots = take_all(pool)
        await asyncio.gather(*(pool.reset(s) for s in slots))
        messages = ["x" * 2 * BROKER_MESSAGE_BYTES if i == 3 else f"m{i}" for i in range(8)]
        outcomes = await asyncio.gather(
            *(pool.step(s, {"message": m}) for s, m in zip(slots, messages, strict=True)),
            return_exceptions=True,
        )
        assert pool.batches == [8] + [1] * 8  # they went out together, then one by one
        assert isinstance(outcomes[3], MessageTooLarge)
        echoed = [o.get("echoed_message") if isinstance(o, dict) else None for o in outcomes]
        assert echoed == [None if i == 3 else f"m{i}" for i in range(8)]

    config = BrokerConfig(limits=Limits(max_message_bytes=BROKER_MESSAGE_BYTES))
    with_pool(8, test, config=config)


def test_an_action_the_wire_cannot_carry_fails_alone() -> None:
    async def test(pool: CountingPool) -> None:
        slots = take_all(pool)
        await asyncio.gather(*(pool.reset(s) for s in slots))
        # JSON has integers msgpack cannot encode; the gateway does not validate actions
        messages: list[Any] = [2**64 if i == 2 else f"m{i}" for i in range(4)]
        outcomes = await asyncio.gather(
            *(pool.step(s, {"message": m}) for s, m in zip(slots, messages, strict=True)),
            return_exceptions=True,
        )
        assert pool.batches == [4] + [1] * 4  # refused whole, then sent one by one
        assert isinstance(outcomes[2], ProtocolError)
        assert "cannot be encoded" in str(outcomes[2])
        echoed = [o.get("echoed_message") if isinstance(o, dict) else None for o in outcomes]
        assert echoed == [None if i == 2 else f"m{i}" for i in range(4)]
        # nothing was left awaited for the batch that never left
        again = await pool.step(slots[2], {"message": "fine"})
        assert again["echoed_message"] == "fine"

    with_pool(4, test)


def test_calls_waiting_when_the_pool_closes_raise_closed_error() -> None:
    async def test(pool: CountingPool) -> None:
        slots = take_all(pool)
        await asyncio.gather(*(pool.reset(s) for s in slots))
        first = asyncio.ensure_future(pool.step(slots[0], {"message": "in flight"}))
        await asyncio.sleep(0)  # the first goes out alone; the second waits for it
        second = asyncio.ensure_future(pool.step(slots[1], {"message": "queued"}))
        await pool.close()
        outcomes = await asyncio.gather(first, second, return_exceptions=True)
        assert all(isinstance(o, ClosedError) for o in outcomes), outcomes
        with pytest.raises(ClosedError):
            await pool.step(slots[0], {"message": "after"})

    with_pool(2, test)
