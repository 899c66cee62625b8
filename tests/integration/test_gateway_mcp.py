"""OpenEnv's MCP methods through the gateway, over real sockets: ``POST /mcp``, ``mcp`` frames on
``/ws``, and connections attaching to sessions opened over HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from openenv_zmq.gateway import create_gateway_app
from tests.idiom_envs import MCP_ECHO
from tests.processes import Broker, running, serving, wait_until

MAX_SESSIONS = 2
IDLE_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker for the module: a worker importing OpenEnv takes seconds to start."""
    with running(tmp_path_factory.mktemp("procs")) as procs:
        yield procs.broker(workers=1, envs=(MCP_ECHO,))


@pytest.fixture
def gateway(broker: Broker) -> Iterator[str]:
    app = create_gateway_app(
        broker.frontend, MCP_ECHO, max_sessions=MAX_SESSIONS, idle_timeout_s=IDLE_TIMEOUT
    )
    with serving(app) as url:
        yield url


@pytest.fixture
def http(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=10) as client:
        yield client


def rpc(http: httpx.Client, method: str, **params: Any) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}
    reply = http.post("/mcp", json=body)
    assert reply.status_code == 200
    answer: dict[str, Any] = reply.json()
    return answer


async def ask(ws: Any, frame: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(frame))
    reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return reply


def test_a_session_opened_over_http_is_shared_with_a_websocket(
    gateway: str, http: httpx.Client
) -> None:
    session_id = rpc(http, "openenv/session/create")["result"]["session_id"]
    url = f"{gateway.replace('http://', 'ws://')}/ws?session_id={session_id}"

    async def run() -> None:
        async with websockets.connect(url) as ws:
            reset = await ask(ws, {"type": "reset"})
            # a non-empty metadata is sent beside reward and done, as openenv 0.10 does
            assert reset["data"]["metadata"]["status"] == "ready"
            listed = await ask(
                ws, {"type": "mcp", "data": {"jsonrpc": "2.0", "method": "tools/list", "id": 5}}
            )
            assert listed["type"] == "mcp" and listed["data"]["id"] == 5
            names = {t["name"] for t in listed["data"]["result"]["tools"]}
            assert names == {"echo_message", "echo_with_length"}
            called = await asyncio.to_thread(
                rpc,
                http,
                "tools/call",
                name="echo_message",
                arguments={"message": "hi"},
                session_id=session_id,
            )
            assert called["result"]["data"] == "hi"
            assert (await ask(ws, {"type": "state"}))["data"]["step_count"] == 2
            # one connection per session, as OpenEnv
            async with websockets.connect(url) as second:
                refused = json.loads(await asyncio.wait_for(second.recv(), 10))
                assert refused["data"]["code"] == "SESSION_ERROR"
                assert "already has an attached WebSocket" in refused["data"]["message"]
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(second.recv(), 10)
        # the connection ended; the session stays for its HTTP client, episode included
        async with websockets.connect(url) as ws:
            assert (await ask(ws, {"type": "state"}))["data"]["step_count"] == 2

    asyncio.run(run())
    assert rpc(http, "openenv/session/close", session_id=session_id)["result"]["closed"] is True
    gone = rpc(http, "tools/list", session_id=session_id)
    assert gone["error"]["code"] == -32602
    assert gone["error"]["message"] == f"Unknown session_id: {session_id}"

    async def unknown() -> None:
        async with websockets.connect(url) as ws:
            refused = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert refused["data"]["code"] == "SESSION_ERROR"
            assert refused["data"]["message"] == f"Unknown session_id: {session_id}"

    asyncio.run(unknown())


def test_http_sessions_count_against_capacity_and_expire_when_idle(
    gateway: str, http: httpx.Client
) -> None:
    ids = [rpc(http, "openenv/session/create")["result"]["session_id"] for _ in range(2)]
    full = rpc(http, "openenv/session/create")
    assert full["error"]["code"] == -32000
    assert full["error"]["data"] == {"active_sessions": 2, "max_sessions": MAX_SESSIONS}

    async def refused() -> dict[str, Any]:
        async with websockets.connect(f"{gateway.replace('http://', 'ws://')}/ws") as ws:
            reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
            return reply

    assert asyncio.run(refused())["data"]["code"] == "CAPACITY_REACHED"
    # one stays in use, the other is left idle and closed after IDLE_TIMEOUT, freeing its slot
    kept, idle = ids

    def idle_one_closed() -> bool:
        assert "result" in rpc(http, "tools/list", session_id=kept)
        return "result" in rpc(http, "openenv/session/create")

    wait_until(idle_one_closed, 10 * IDLE_TIMEOUT, "the idle session to be closed")
    assert rpc(http, "tools/list", session_id=idle)["error"]["code"] == -32602


def test_http_routes_of_an_mcp_env(http: httpx.Client) -> None:
    reset = http.post("/reset").json()
    assert reset["metadata"] == {"status": "ready", "message": "Echo environment ready!"}
    assert reset["observation"]["metadata"] == reset["metadata"]
    # a tool call without a session: a fresh env for the request
    called = rpc(http, "tools/call", name="echo_with_length", arguments={"message": "abc"})
    assert called["result"]["data"] == {"message": "abc", "length": 3}
    assert rpc(http, "tools/call", name="nope")["error"]["code"] == -32603
