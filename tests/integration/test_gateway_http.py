"""The gateway's HTTP routes and idle timeout against a real broker, over real sockets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from openenv_zmq.gateway import create_gateway_app
from tests.integration.test_gateway import first_reply, one_session
from tests.processes import Processes, serving, wait_until

MAX_SESSIONS = 2
IDLE_TIMEOUT = 1.0


@pytest.fixture
def gateway(procs: Processes) -> Iterator[str]:
    broker = procs.broker(workers=1, envs=("echo",))
    app = create_gateway_app(
        broker.frontend, "echo", max_sessions=MAX_SESSIONS, idle_timeout_s=IDLE_TIMEOUT
    )
    with serving(app) as url:
        yield url


@pytest.fixture
def http(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=10) as client:
        yield client


def ws_url(gateway: str) -> str:
    return gateway.replace("http://", "ws://", 1) + "/ws"


def test_info_routes(http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "healthy"}
    assert http.get("/metadata").json() == {
        "name": "echo",
        "description": "Echoes each message back; the reward is a tenth of its length.",
        "readme_content": None,
        "version": None,
        "author": None,
        "documentation_url": None,
    }
    schema = http.get("/schema").json()
    assert schema["action"]["title"] == "EchoAction"
    assert schema["action"]["required"] == ["message"]
    assert "echoed_message" in schema["observation"]["properties"]
    assert "step_count" in schema["state"]["properties"]
    openapi = http.get("/openapi.json").json()
    assert isinstance(openapi["info"]["version"], str) and openapi["info"]["version"]
    assert {"/reset", "/step", "/state", "/schema", "/metadata", "/mcp"} <= set(openapi["paths"])


def test_reset_step_state_are_stateless(http: httpx.Client) -> None:
    ready = {
        "observation": {
            "metadata": {},
            "echoed_message": "Echo environment ready!",
            "message_length": 0,
        },
        "reward": 0.0,
        "done": False,
        "metadata": None,  # as openenv 0.10's HTTP replies: the observation's, null when empty
    }
    assert http.post("/reset").json() == ready
    # keys the env's reset does not take are dropped, as in OpenEnv
    assert http.post("/reset", json={"seed": 1, "episode_id": "e", "extra": 2}).json() == ready
    # more requests than slots: each one gives its slot back
    for _ in range(2 * MAX_SESSIONS):
        reply = http.post("/step", json={"action": {"message": "Hello"}, "timeout_s": 5})
        assert reply.status_code == 200
        assert reply.json() == {
            "observation": {"metadata": {}, "echoed_message": "Hello", "message_length": 5},
            "reward": pytest.approx(0.5),
            "done": False,
            "metadata": None,
        }
    state = http.get("/state").json()
    assert state["step_count"] == 0 and state["episode_id"]


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/reset", {"seed": -1}),
        ("/reset", {"seed": 2**64}),
        ("/reset", {"episode_id": "x" * 256}),
        ("/step", {}),
        ("/step", {"action": "Hello"}),
        ("/step", {"action": {"message": "Hello"}, "timeout_s": 0}),
        ("/step", {"action": {"msg": "wrong field"}}),
        ("/step", {"action": {"message": 5}}),
    ],
)
def test_bad_bodies_are_422(http: httpx.Client, route: str, body: dict[str, Any]) -> None:
    reply = http.post(route, json=body)
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"]


def test_http_requests_share_the_session_slots(gateway: str, http: httpx.Client) -> None:
    async def run() -> None:
        sessions = [await websockets.connect(ws_url(gateway)) for _ in range(MAX_SESSIONS)]
        for ws in sessions:
            await ws.send('{"type":"state"}')
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "state"
        refused = await asyncio.to_thread(http.post, "/reset")
        assert refused.status_code == 503
        assert "capacity" in refused.json()["detail"]
        for ws in sessions:
            await ws.close()

    asyncio.run(run())
    wait_until(lambda: http.post("/reset").status_code == 200, 10, "the slots to be freed")


def test_mcp_answers_json_rpc_errors(http: httpx.Client) -> None:
    def call(body: bytes) -> dict[str, Any]:
        reply = http.post("/mcp", content=body, headers={"content-type": "application/json"})
        assert reply.status_code == 200
        answer: dict[str, Any] = reply.json()
        assert answer["jsonrpc"] == "2.0" and "result" not in answer
        return answer

    tools = call(b'{"jsonrpc":"2.0","method":"tools/list","id":7}')
    assert tools["id"] == 7 and tools["error"]["code"] == -32603
    call_tool = b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"t"},"id":"a"}'
    assert call(call_tool)["error"]["code"] == -32603
    # a missing tool name is refused first, as by OpenEnv
    assert call(b'{"jsonrpc":"2.0","method":"tools/call","id":"a"}')["error"]["code"] == -32602
    unknown = call(b'{"jsonrpc":"2.0","method":"dance","id":8}')
    assert unknown["id"] == 8 and unknown["error"]["code"] == -32601
    assert call(b"not json")["error"]["code"] == -32700
    assert call(b"\xff\xfe")["error"]["code"] == -32700
    assert call(b'{"method":"tools/list"}')["error"]["code"] == -32600
    assert call(b'{"jsonrpc":"2.0","method":"x","params":[1]}')["error"]["code"] == -32600
    assert call(b"[]")["error"]["code"] == -32700  # JSON, but not an object: as OpenEnv


def test_openenv_client_over_http_url(gateway: str) -> None:
    _, step, state = asyncio.run(one_session(gateway, "Hello"))
    assert step.observation == {"metadata": {}, "echoed_message": "Hello", "message_length": 5}
    assert state["step_count"] == 1


def test_idle_session_is_closed_and_its_slot_freed(gateway: str) -> None:
    async def run() -> None:
        idle = await websockets.connect(ws_url(gateway))
        busy = await websockets.connect(ws_url(gateway))
        for ws in (idle, busy):
            await ws.send('{"type":"reset"}')
            await asyncio.wait_for(ws.recv(), 10)
        started = time.monotonic()
        # the busy session sends a frame every IDLE_TIMEOUT / 3 and outlives the idle one
        while time.monotonic() - started < 1.5 * IDLE_TIMEOUT:
            await busy.send('{"type":"state"}')
            assert json.loads(await asyncio.wait_for(busy.recv(), 10))["type"] == "state"
            await asyncio.sleep(IDLE_TIMEOUT / 3)
        with pytest.raises(websockets.ConnectionClosedOK):
            await asyncio.wait_for(idle.recv(), 10)
        assert idle.close_code == 1000
        assert idle.close_reason and "idle" in idle.close_reason
        # both slots were taken: a new session only gets in because the idle one was freed
        assert await first_reply(ws_url(gateway), '{"type":"state"}', within=5.0) == "state"
        await busy.send('{"type":"state"}')
        assert json.loads(await asyncio.wait_for(busy.recv(), 10))["type"] == "state"
        await busy.close()

    asyncio.run(run())


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_idle_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="idle_timeout_s"):
        create_gateway_app("tcp://127.0.0.1:1", "echo", idle_timeout_s=timeout)
