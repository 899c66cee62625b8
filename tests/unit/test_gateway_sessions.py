"""The gateway's SessionPool, its batching and its SessionRegistry, over the in-process transport
(no sockets)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from broker.core import BrokerConfig
from broker.inprocess import InProcessBroker
from openenv_zmq import AsyncBatchClient, BatchResult
from openenv_zmq.errors import ActionValidationError, BrokerLost, MessageTooLarge, ProtocolError
from openenv_zmq.gateway import SessionPool, SessionRegistry, Step
from openenv_zmq.gateway.app import answer
from openenv_zmq.gateway.sessions import SessionUnavailable
from openenv_zmq.protocol import Limits

BROKER_MESSAGE_BYTES = 2**20


class CountingPool(SessionPool):
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
    """Run ``test`` on a pool of ``max_sessions`` slots of ``env`` on an in-process broker."""
    inprocess = InProcessBroker([env], **broker)

    async def main() -> None:
        async with AsyncBatchClient(transport=inprocess.connect_async()) as client:
            pool = await CountingPool.open(client, env, max_sessions)
            pool.batches = []
            try:
                await test(pool)
            finally:
                await pool.close()

    try:
        asyncio.run(main())
    finally:
        inprocess.close()


def take_all(pool: SessionPool) -> list[int]:
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


def test_a_bad_action_is_openenv_s_validation_error_from_the_worker() -> None:
    async def test(pool: CountingPool) -> None:
        [slot] = take_all(pool)
        frame = json.loads(await answer(pool, slot, Step({"msg": "wrong field"})))
        assert pool.batches == [1]  # the premise: the worker validated it, not the gateway
        assert frame["type"] == "error"
        data = frame["data"]
        assert data["code"] == "VALIDATION_ERROR" and data["message"] == "Invalid message"
        kinds = {(e["type"], tuple(e["loc"])) for e in data["errors"]}
        assert kinds == {("missing", ("message",)), ("extra_forbidden", ("msg",))}
        ok = json.loads(await answer(pool, slot, Step({"message": "ok"})))
        assert ok["data"]["observation"]["echoed_message"] == "ok"

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


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


IDLE = 10.0


def test_sessions_hold_slots_and_are_found_by_id() -> None:
    async def test(pool: CountingPool) -> None:
        sessions = SessionRegistry(pool, IDLE, FakeClock())
        first, second = sessions.open(), sessions.open(attached=True)
        assert first is not None and second is not None and first.id != second.id
        assert sessions.open() is None and pool.acquire() is None  # the pool is full
        assert sessions.get(first.id) is first and sessions.get("nope") is None
        assert sessions.get(5) is None and sessions.get(["unhashable"]) is None
        # a connection's own session ends with it, and its slot is free again
        await sessions.detach(second)
        assert sessions.get(second.id) is None and second.closed
        assert pool.active_sessions == 1
        async with sessions.use(first) as slot:
            assert slot == first.slot
            await pool.step(slot, {"message": "hi"})
        assert await sessions.close(first) is True
        assert sessions.get(first.id) is None and pool.active_sessions == 0
        with pytest.raises(SessionUnavailable, match="Unknown session_id"):
            async with sessions.use(first):
                pass
        assert await sessions.close(first) is True  # closing twice is harmless
        assert pool.active_sessions == 0

    with_pool(2, test)


def test_attaching_to_a_session_opened_over_http() -> None:
    async def test(pool: CountingPool) -> None:
        sessions = SessionRegistry(pool, IDLE, FakeClock())
        session = sessions.open()
        assert session is not None
        with pytest.raises(SessionUnavailable, match="Unknown session_id: missing"):
            sessions.attach("missing")
        assert sessions.attach(session.id) is session
        with pytest.raises(SessionUnavailable, match="already has an attached WebSocket"):
            sessions.attach(session.id)
        # the connection ends: the session stays for the HTTP client, episode included
        async with sessions.use(session) as slot:
            await pool.step(slot, {"message": "hi"})
        await sessions.detach(session)
        assert sessions.get(session.id) is session
        assert sessions.attach(session.id) is session
        async with sessions.use(session) as slot:
            assert (await pool.state(slot))["step_count"] == 1
        # closed while a connection serves it: it closes when that detaches
        assert await sessions.close(session) is False
        assert sessions.get(session.id) is session
        await sessions.detach(session)
        assert sessions.get(session.id) is None and pool.active_sessions == 0

    with_pool(1, test)


def test_idle_sessions_without_a_connection_expire() -> None:
    async def test(pool: CountingPool) -> None:
        clock = FakeClock()
        sessions = SessionRegistry(pool, IDLE, clock)
        idle, served, stale = sessions.open(), sessions.open(attached=True), sessions.open()
        assert idle is not None and served is not None and stale is not None
        clock.now = IDLE - 1
        async with sessions.use(idle):  # a call makes it active again
            pass
        clock.now = IDLE + 1
        assert sessions.expire() == [stale.id]
        busy = sessions.open()
        assert busy is not None
        clock.now = 3 * IDLE
        async with busy.lock:  # a call running on it: not idle
            assert sessions.expire() == [idle.id]
        assert sessions.get(served.id) is served  # a connection serves it: never idle
        assert SessionRegistry(pool, None, clock).expire() == []

    with_pool(3, test)


def test_a_close_waits_for_the_call_running_on_the_session() -> None:
    async def test(pool: CountingPool) -> None:
        sessions = SessionRegistry(pool, None, FakeClock())
        session = sessions.open()
        assert session is not None
        order: list[str] = []

        async def call() -> None:
            async with sessions.use(session) as slot:
                await asyncio.sleep(0.01)
                await pool.step(slot, {"message": "hi"})
                order.append("step")

        async def close() -> None:
            await asyncio.sleep(0)
            assert await sessions.close(session) is True
            order.append("close")

        await asyncio.wait_for(asyncio.gather(call(), close()), 10)
        assert order == ["step", "close"]

    with_pool(1, test)
