"""OpenEnv's MCP methods on the gateway's sessions, over the in-process transport (no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from openenv_zmq.gateway import McpHandler, SessionRegistry
from openenv_zmq.gateway.jsonrpc import NO_MCP, JsonRpcRequest, Reply, RpcCode
from openenv_zmq.gateway.mcp import mcp_unavailable
from openenv_zmq.gateway.sessions import capacity_message
from tests.idiom_envs import MCP_ECHO
from tests.unit.test_pool_slots import CountingPool, with_pool


def rpc(method: str, request_id: Any = 1, **params: Any) -> JsonRpcRequest:
    return JsonRpcRequest(jsonrpc="2.0", method=method, params=params, id=request_id)


def failure(reply: Reply) -> tuple[int, str]:
    assert "result" not in reply, reply
    return reply["error"]["code"], reply["error"]["message"]


def test_which_envs_serve_mcp_tools() -> None:
    assert mcp_unavailable(MCP_ECHO) is None
    assert mcp_unavailable("echo") == NO_MCP
    assert "cannot import" in str(mcp_unavailable("tests.no_such_module:Env"))


def test_tools_are_steps_of_the_session_s_env() -> None:
    async def test(pool: CountingPool) -> None:
        sessions = SessionRegistry(pool)
        mcp = McpHandler(sessions, None)
        session = sessions.open(attached=True)
        assert session is not None
        listed = await mcp.handle(rpc("tools/list", 7), session)
        assert listed["id"] == 7
        tools = {t["name"]: t for t in listed["result"]["tools"]}
        assert set(tools) == {"echo_message", "echo_with_length"}
        assert tools["echo_message"]["inputSchema"]["required"] == ["message"]
        assert tools["echo_message"]["description"] == "Echo back the provided message."
        called = await mcp.handle(
            rpc("tools/call", "c", name="echo_with_length", arguments={"message": "abc"}), session
        )
        assert called["id"] == "c" and called["result"]["data"] == {"message": "abc", "length": 3}
        assert called["result"]["is_error"] is False
        assert called["result"]["content"][0]["type"] == "text"
        async with sessions.use(session) as slot:
            assert (await pool.state(slot))["step_count"] == 2  # both were steps
        assert pool.batches == [1, 1]

    with_pool(1, test, env=MCP_ECHO)


def test_tool_failures_are_openenv_s_json_rpc_errors() -> None:
    async def test(pool: CountingPool) -> None:
        mcp = McpHandler(SessionRegistry(pool), None)
        unknown = await mcp.handle(rpc("tools/call", name="nope", arguments={}))
        assert failure(unknown) == (RpcCode.INTERNAL_ERROR, "Unknown tool: 'nope'")
        bad_arguments = await mcp.handle(rpc("tools/call", name="echo_message", arguments={"x": 1}))
        code, message = failure(bad_arguments)
        assert code == RpcCode.INTERNAL_ERROR and "message" in message
        not_a_dict = await mcp.handle(rpc("tools/call", name="echo_message", arguments="hi"))
        code, message = failure(not_a_dict)  # the worker refused the action itself
        assert code == RpcCode.INTERNAL_ERROR and "arguments" in message
        assert failure(await mcp.handle(rpc("tools/call")))[0] == RpcCode.INVALID_PARAMS
        assert failure(await mcp.handle(rpc("prompts/list")))[0] == RpcCode.METHOD_NOT_FOUND
        assert pool.active_sessions == 0  # each borrowed slot was given back

    with_pool(1, test, env=MCP_ECHO)


def test_sessions_opened_and_closed_over_json_rpc() -> None:
    async def test(pool: CountingPool) -> None:
        sessions = SessionRegistry(pool)
        mcp = McpHandler(sessions, None)
        created = await mcp.handle(rpc("openenv/session/create"))
        session_id = created["result"]["session_id"]
        assert sessions.get(session_id) is not None
        full = await mcp.handle(rpc("openenv/session/create", 2))
        assert failure(full) == (RpcCode.SERVER_ERROR, capacity_message(pool))
        assert full["id"] == 2 and full["error"]["data"] == {
            "active_sessions": 1,
            "max_sessions": 1,
        }
        # no slot is free for a request without a session either
        assert failure(await mcp.handle(rpc("tools/list")))[0] == RpcCode.SERVER_ERROR
        for _ in range(2):
            called = await mcp.handle(
                rpc(
                    "tools/call",
                    name="echo_message",
                    arguments={"message": "hi"},
                    session_id=session_id,
                )
            )
            assert called["result"]["data"] == "hi"
        session = sessions.get(session_id)
        assert session is not None
        async with sessions.use(session) as slot:
            assert (await pool.state(slot))["step_count"] == 2  # one episode across requests
        missing = await mcp.handle(rpc("openenv/session/close", 3))
        assert failure(missing) == (
            RpcCode.INVALID_PARAMS,
            "Invalid params - 'session_id' is required",
        )
        closed = await mcp.handle(rpc("openenv/session/close", 4, session_id=session_id))
        assert closed == {
            "jsonrpc": "2.0",
            "id": 4,
            "result": {"session_id": session_id, "closed": True},
        }
        for method in ("tools/list", "openenv/session/close", "no/such/method"):
            gone = await mcp.handle(rpc(method, session_id=session_id))
            assert failure(gone) == (RpcCode.INVALID_PARAMS, f"Unknown session_id: {session_id}")
        assert pool.active_sessions == 0

    with_pool(1, test, env=MCP_ECHO)


def test_a_connection_s_own_session_over_mcp_frames() -> None:
    async def test(pool: CountingPool) -> None:
        sessions = SessionRegistry(pool)
        mcp = McpHandler(sessions, None)
        own, other = sessions.open(attached=True), sessions.open()
        assert own is not None and other is not None
        created = await mcp.handle(rpc("openenv/session/create"), own)
        assert created["result"] == {"session_id": own.id}  # its own, no new one
        refused = await mcp.handle(rpc("openenv/session/close", session_id=own.id), own)
        assert failure(refused) == (
            RpcCode.INVALID_REQUEST,
            "Cannot close active WebSocket-managed session via MCP method",
        )
        # params.session_id does not redirect a connection's tool calls
        await mcp.handle(rpc("tools/list", session_id=other.id), own)
        async with sessions.use(other) as slot:
            assert (await pool.state(slot))["step_count"] == 0
        # a session a connection serves, closed from elsewhere, closes when it detaches
        closing = await mcp.handle(rpc("openenv/session/close", session_id=own.id))
        assert closing["result"] == {"session_id": own.id, "closed": False, "closing": True}
        await sessions.detach(own)
        assert sessions.get(own.id) is None

    with_pool(2, test, env=MCP_ECHO)


@pytest.mark.parametrize("method", ["tools/list", "tools/call"])
def test_an_env_without_mcp_answers_as_openenv_s_does(method: str) -> None:
    async def test(pool: CountingPool) -> None:
        sessions = SessionRegistry(pool)
        mcp = McpHandler(sessions, mcp_unavailable("echo"))
        reply = await mcp.handle(rpc(method, name="echo_message"))
        assert failure(reply) == (RpcCode.INTERNAL_ERROR, "Environment does not support MCP")
        assert pool.batches == []  # nothing was stepped
        created = await mcp.handle(rpc("openenv/session/create"))
        assert sessions.get(created["result"]["session_id"]) is not None

    with_pool(1, test)
