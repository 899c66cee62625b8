"""The gateway's SessionRegistry and its replies over a SlotPool, over the in-process transport
(no sockets)."""

from __future__ import annotations

import asyncio
import json

import pytest

from openenv_zmq.gateway import SessionRegistry, Step
from openenv_zmq.gateway.app import answer
from openenv_zmq.gateway.sessions import SessionUnavailable
from tests.unit.test_pool_slots import CountingPool, take_all, with_pool


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
