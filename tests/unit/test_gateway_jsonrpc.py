"""OpenEnv's MCP over JSON-RPC: parsing requests, routing methods and building replies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from openenv_zmq.gateway.jsonrpc import (
    NO_MCP,
    JsonRpcRequest,
    RpcCode,
    ToolStep,
    parse_body,
    parse_request,
    requested_session,
    session_closed,
    tool_reply,
    tool_step,
)


def request(method: str, request_id: Any = 1, **params: Any) -> JsonRpcRequest:
    return JsonRpcRequest(jsonrpc="2.0", method=method, params=params, id=request_id)


def code_of(reply: Any) -> int:
    assert isinstance(reply, dict) and reply["jsonrpc"] == "2.0" and "result" not in reply
    code: int = reply["error"]["code"]
    assert reply["error"]["data"] is None
    return code


def test_requests_parse() -> None:
    parsed = parse_body(b'{"jsonrpc":"2.0","method":"tools/list","params":{"a":1},"id":"x"}')
    assert parsed == request("tools/list", "x", a=1)
    assert parse_request({"jsonrpc": "2.0", "method": "m"}) == request("m", None)


@pytest.mark.parametrize("body", [b"not json", b"{", b"\xff\xfe", b"", b"[]", b'"tools/list"'])
def test_bad_json_or_json_that_is_not_an_object_is_a_parse_error(body: bytes) -> None:
    reply = parse_body(body)
    assert code_of(reply) == RpcCode.PARSE_ERROR
    assert isinstance(reply, dict) and reply["id"] is None
    assert reply["error"]["message"] == "Parse error"


@pytest.mark.parametrize(
    "raw",
    [
        {"method": "tools/list"},
        {"jsonrpc": "1.0", "method": "m"},
        {"jsonrpc": "2.0"},
        {"jsonrpc": "2.0", "method": "m", "params": [1]},
        {"jsonrpc": "2.0", "method": "m", "id": 7, "extra": 1},
        {"jsonrpc": "2.0", "method": "m", "id": [7]},
        [],
        "tools/list",
    ],
)
def test_what_is_not_a_request_is_invalid_with_a_null_id(raw: Any) -> None:
    reply = parse_request(raw)
    assert code_of(reply) == RpcCode.INVALID_REQUEST
    assert isinstance(reply, dict) and reply["id"] is None
    assert reply["error"]["message"].startswith("Invalid request: ")


def test_tool_methods_become_openenv_s_tagged_actions() -> None:
    assert tool_step(request("tools/list"), None) == ToolStep({"type": "list_tools"})
    call = request("tools/call", name="echo", arguments={"message": "hi"})
    assert tool_step(call, None) == ToolStep(
        {"type": "call_tool", "tool_name": "echo", "arguments": {"message": "hi"}}
    )
    no_arguments = tool_step(request("tools/call", name="echo"), None)
    assert no_arguments == ToolStep({"type": "call_tool", "tool_name": "echo", "arguments": {}})


def test_tool_method_errors_in_openenv_s_order() -> None:
    for no_name in (request("tools/call"), request("tools/call", name="")):
        reply = tool_step(no_name, NO_MCP)  # the missing name is reported first
        assert code_of(reply) == RpcCode.INVALID_PARAMS
        assert isinstance(reply, dict) and reply["error"]["message"] == "Missing 'name' in params"
    for method in ("tools/list", "tools/call"):
        reply = tool_step(request(method, 9, name="echo"), NO_MCP)
        assert code_of(reply) == RpcCode.INTERNAL_ERROR
        assert isinstance(reply, dict) and reply["id"] == 9
        assert reply["error"]["message"] == "Environment does not support MCP"
    unknown = tool_step(request("resources/list", "r"), None)
    assert code_of(unknown) == RpcCode.METHOD_NOT_FOUND
    assert isinstance(unknown, dict) and unknown["id"] == "r"
    assert unknown["error"]["message"] == "Method not found: resources/list"


def test_requested_session_ignores_empty_ids() -> None:
    assert requested_session(request("tools/list", session_id="s1")) == "s1"
    assert requested_session(request("tools/list", session_id="")) is None
    assert requested_session(request("tools/list")) is None


SCHEMA = {"type": "object", "properties": {"message": {"type": "string"}}}


def test_tools_list_reply_names_fields_as_the_mcp_sdk() -> None:
    observation: dict[str, Any] = {
        "done": False,
        "reward": None,
        "metadata": {},
        "tools": [{"name": "echo", "description": "Echo it.", "input_schema": SCHEMA}],
    }
    assert tool_reply(request("tools/list", 3), observation) == {
        "jsonrpc": "2.0",
        "id": 3,
        "result": {"tools": [{"name": "echo", "description": "Echo it.", "inputSchema": SCHEMA}]},
    }
    failed = {"tools": [], "metadata": {"error": "boom", "error_type": "list_tools_failed"}}
    reply = tool_reply(request("tools/list", 3), failed)
    assert code_of(reply) == RpcCode.INTERNAL_ERROR and reply["error"]["message"] == "boom"
    assert code_of(tool_reply(request("tools/list"), {"metadata": {}})) == RpcCode.INTERNAL_ERROR


def test_tools_call_reply_is_the_result_or_the_tool_s_error() -> None:
    result: dict[str, Any] = {"content": [], "structured_content": None, "meta": None, "data": "hi"}
    observation = {"tool_name": "echo", "result": {**result, "is_error": False}, "error": None}
    reply = tool_reply(request("tools/call", "c", name="echo"), observation)
    assert reply == {"jsonrpc": "2.0", "id": "c", "result": {**result, "is_error": False}}
    failed = {
        "tool_name": "nope",
        "result": None,
        "error": {"error_type": "tool_not_found", "message": "Unknown tool: 'nope'"},
    }
    reply = tool_reply(request("tools/call", "c", name="nope"), failed)
    assert code_of(reply) == RpcCode.INTERNAL_ERROR
    assert reply["id"] == "c" and reply["error"]["message"] == "Unknown tool: 'nope'"
    not_a_tool_call = tool_reply(request("tools/call", name="echo"), {"metadata": {}})
    assert code_of(not_a_tool_call) == RpcCode.INTERNAL_ERROR


def test_session_close_replies() -> None:
    assert session_closed("s", 1, now=True)["result"] == {"session_id": "s", "closed": True}
    assert session_closed("s", 1, now=False)["result"] == {
        "session_id": "s",
        "closed": False,
        "closing": True,
    }


def test_replies_are_json() -> None:
    reply = tool_step(request("tools/list", "é"), NO_MCP)
    assert json.loads(json.dumps(reply)) == reply
