"""The gateway against a real broker, driven by OpenEnv's own client and by raw websockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from echo_env import EchoAction, EchoObservation
from openenv.core.client_types import (  # type: ignore[import-untyped]
    StepResult as OpenEnvStepResult,
)
from openenv.core.env_client import EnvClient as OpenEnvClient  # type: ignore[import-untyped]
from openenv.core.generic_client import GenericEnvClient  # type: ignore[import-untyped]

from openenv_zmq import State
from openenv_zmq.gateway import create_gateway_app
from tests.processes import Processes, serving

MAX_SESSIONS = 8


@pytest.fixture
def gateway(procs: Processes) -> Iterator[str]:
    """The gateway app served by uvicorn in a thread; yields its ws:// base URL."""
    broker = procs.broker(workers=1, envs=("echo",))
    app = create_gateway_app(broker.frontend, "echo", max_sessions=MAX_SESSIONS)
    with serving(app) as url:
        yield url.replace("http://", "ws://")


async def one_session(url: str, message: str) -> tuple[Any, Any, Any]:
    async with GenericEnvClient(base_url=url) as client:
        reset = await client.reset()
        step = await client.step({"message": message})
        state = await client.state()
        return reset, step, state


def test_openenv_client_reset_step_state(gateway: str) -> None:
    reset, step, state = asyncio.run(one_session(gateway, "Hello"))
    assert reset.observation == {
        "metadata": {},
        "echoed_message": "Echo environment ready!",
        "message_length": 0,
    }
    assert reset.reward == 0.0 and reset.done is False
    assert step.observation == {"metadata": {}, "echoed_message": "Hello", "message_length": 5}
    assert step.reward == pytest.approx(0.5) and step.done is False
    assert state["step_count"] == 1


def test_invalid_action_keeps_the_session(gateway: str) -> None:
    async def run() -> None:
        async with GenericEnvClient(base_url=gateway) as client:
            await client.reset()
            with pytest.raises(RuntimeError, match="VALIDATION_ERROR"):
                await client.step({"msg": "wrong field"})
            step = await client.step({"message": "ok"})
            assert step.observation["echoed_message"] == "ok"
            assert (await client.state())["step_count"] == 1

    asyncio.run(run())


def test_concurrent_sessions_are_kept_apart(gateway: str) -> None:
    async def run() -> list[tuple[Any, Any, Any]]:
        return await asyncio.gather(*(one_session(gateway, "m" * (i + 1)) for i in range(8)))

    for i, (_, step, state) in enumerate(asyncio.run(run())):
        assert step.observation == {
            "metadata": {},
            "echoed_message": "m" * (i + 1),
            "message_length": i + 1,
        }
        assert step.reward == pytest.approx(0.1 * (i + 1))
        assert state["step_count"] == 1


def test_capacity_reached_then_freed(gateway: str) -> None:
    async def run() -> None:
        clients = [GenericEnvClient(base_url=gateway) for _ in range(MAX_SESSIONS - 1)]
        for client in clients:
            await client.connect()
            await client.reset()
        dropped = await websockets.connect(f"{gateway}/ws")
        await dropped.send('{"type":"reset"}')
        await asyncio.wait_for(dropped.recv(), 10)
        async with websockets.connect(f"{gateway}/ws") as extra:
            refusal = json.loads(await asyncio.wait_for(extra.recv(), 10))
            assert refusal["data"]["code"] == "CAPACITY_REACHED"
            assert refusal["data"]["max_sessions"] == MAX_SESSIONS
            assert refusal["data"]["active_sessions"] == MAX_SESSIONS
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(extra.recv(), 10)
        # a dropped connection (no close frame) frees its slot
        dropped.transport.abort()
        await asyncio.wait_for(dropped.wait_closed(), 10)
        assert await first_reply(f"{gateway}/ws", '{"type":"state"}', within=5.0) == "state"
        for client in clients:
            await client.close()

    asyncio.run(run())


async def first_reply(url: str, frame: str, within: float) -> str:
    """The type of the first reply a new session gets to ``frame``, retried while refused."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        async with websockets.connect(url) as ws:
            await ws.send(frame)
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if reply["type"] != "error" or asyncio.get_running_loop().time() > deadline:
            kind: str = reply["type"]
            return kind
        await asyncio.sleep(0.01)


def test_bad_frames_keep_the_session_open(gateway: str) -> None:
    async def run() -> None:
        async with websockets.connect(f"{gateway}/ws") as ws:

            async def ask(frame: str) -> dict[str, Any]:
                await ws.send(frame)
                reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
                return reply

            assert (await ask("not json"))["data"]["code"] == "INVALID_JSON"
            assert (await ask('{"type":"dance"}'))["data"]["code"] == "UNKNOWN_TYPE"
            assert (await ask('{"type":"step"}'))["data"]["code"] == "VALIDATION_ERROR"
            reset = await ask('{"type":"reset","data":{"seed":1}}')
            assert reset["data"]["observation"]["echoed_message"] == "Echo environment ready!"
            # pipelining: three requests sent at once are answered in order
            for message in ("a", "bb", "ccc"):
                await ws.send(json.dumps({"type": "step", "data": {"message": message}}))
            replies = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(3)]
            assert [r["data"]["observation"]["message_length"] for r in replies] == [1, 2, 3]
            await ws.send('{"type":"close"}')
            with pytest.raises(websockets.ConnectionClosedOK):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1000

    asyncio.run(run())


class TypedEchoClient(OpenEnvClient):  # type: ignore[misc]
    """A typed client written against openenv-core's own ``EnvClient``, as OpenEnv envs ship."""

    def _step_payload(self, action: EchoAction) -> dict[str, Any]:
        return {"message": action.message}

    def _parse_result(self, payload: dict[str, Any]) -> OpenEnvStepResult:
        return OpenEnvStepResult(
            observation=EchoObservation(**payload["observation"]),
            reward=payload.get("reward"),
            done=payload.get("done", False),
        )

    def _parse_state(self, payload: dict[str, Any]) -> State:
        return State(**payload)


def test_32_typed_openenv_clients_are_kept_apart(procs: Processes) -> None:
    broker = procs.broker(workers=2, envs=("echo",))
    app = create_gateway_app(broker.frontend, "echo", max_sessions=32)

    async def session(url: str, i: int) -> tuple[str, float | None, int]:
        async with TypedEchoClient(base_url=url) as client:
            await client.reset()
            for _ in range(i % 3):
                await client.step(EchoAction(message="x"))
            result = await client.step(EchoAction(message=f"session-{i}"))
            state = await client.state()
            return result.observation.echoed_message, result.reward, state.step_count

    async def all_sessions(url: str) -> list[tuple[str, float | None, int]]:
        return await asyncio.gather(*(session(url, i) for i in range(32)))

    with serving(app) as url:
        results = asyncio.run(all_sessions(url))
    for i, (echoed, reward, steps) in enumerate(results):
        assert echoed == f"session-{i}"
        assert reward == pytest.approx(len(f"session-{i}") * 0.1)
        assert steps == i % 3 + 1


BROKER_MESSAGE_MB = 1
WS_MAX_SIZE = 4 * 2**20


def test_bad_input_never_disturbs_another_session(procs: Processes) -> None:
    """While one OpenEnv client steps on, another session sends everything OpenEnv refuses."""
    broker = procs.broker(workers=1, extra=("--max-message-mb", str(BROKER_MESSAGE_MB)))
    app = create_gateway_app(broker.frontend, "echo", max_sessions=MAX_SESSIONS)

    async def good_session(url: str, stop: asyncio.Event) -> int:
        async with GenericEnvClient(base_url=url) as client:
            await client.reset()
            steps = 0
            while not stop.is_set() and steps < 100_000:
                steps += 1
                result = await client.step({"message": f"good-{steps}"})
                assert result.observation["echoed_message"] == f"good-{steps}"
            assert (await client.state())["step_count"] == steps
            return steps

    async def ask(ws: Any, frame: str | bytes) -> dict[str, Any]:
        await ws.send(frame)
        data: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))["data"]
        return data

    async def bad_sessions(ws_url: str) -> None:
        async with websockets.connect(ws_url, max_size=None) as ws:
            assert (await ask(ws, "{"))["code"] == "INVALID_JSON"
            assert (await ask(ws, "[1, 2]"))["code"] == "VALIDATION_ERROR"
            assert (await ask(ws, '{"type": 5}'))["code"] == "UNKNOWN_TYPE"
            extra_key = '{"type":"step","data":{"message":"x"},"extra":1}'
            assert (await ask(ws, extra_key))["errors"][0]["type"] == "extra_forbidden"
            extra_field = '{"type":"step","data":{"message":"x","loud":true}}'
            assert (await ask(ws, extra_field))["errors"][0]["loc"] == ["loud"]
            # fits the WebSocket limit, not the broker's: this request alone fails
            over_broker = json.dumps({"type": "step", "data": {"message": "x" * 2**21}})
            refused = await ask(ws, over_broker)
            assert refused["code"] == "EXECUTION_ERROR" and "over the limit" in refused["message"]
            # valid JSON that the wire cannot carry (msgpack's ints stop at 2**64): this alone
            unpackable = '{"type":"step","data":{"message":18446744073709551616}}'
            refused = await ask(ws, unpackable)
            assert refused["code"] == "EXECUTION_ERROR"
            assert "cannot be encoded" in refused["message"]
            assert (await ask(ws, '{"type":"step","data":{"message":"still"}}'))["reward"] > 0
        async with websockets.connect(ws_url) as ws:
            binary = await ask(ws, b'{"type":"reset"}')
            assert binary["code"] == "SESSION_ERROR" and "binary" in binary["message"]
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1003
        async with websockets.connect(ws_url, max_size=None) as ws:
            await ws.send("x" * (WS_MAX_SIZE + 1))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1009  # message too big, as uvicorn closes OpenEnv's server

    async def run(url: str) -> int:
        stop = asyncio.Event()
        good = asyncio.create_task(good_session(url, stop))
        try:
            for _ in range(3):
                await bad_sessions(f"{url.replace('http://', 'ws://')}/ws")
        finally:
            stop.set()
        return await asyncio.wait_for(good, 30)

    with serving(app, ws_max_size=WS_MAX_SIZE) as url:
        assert asyncio.run(run(url)) > 0
