"""OpenEnv's MCP over JSON-RPC 2.0, with no I/O: a request in, what to do or the reply out.

``POST /mcp`` bodies and the ``data`` of ``{"type":"mcp"}`` frames are parsed here; a request
either gets its reply at once (an error) or names what the gateway must do: open or close a
session, or step a session's env with one of OpenEnv's MCP actions. Replies, error codes and
messages are openenv 0.10's (``mcp_handler`` in its ``http_server.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

JsonRpcId = str | int | None
Reply = dict[str, Any]
"""A JSON-RPC response object, ready to send as JSON."""


class RpcCode(IntEnum):
    """JSON-RPC 2.0's error codes, and the one server error OpenEnv uses."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    SERVER_ERROR = -32000


class JsonRpcRequest(BaseModel):
    """A JSON-RPC 2.0 request, as OpenEnv's ``JsonRpcRequest``."""

    model_config = ConfigDict(extra="forbid")

    jsonrpc: Literal["2.0"]
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    id: JsonRpcId = None


TOOLS_LIST = "tools/list"
TOOLS_CALL = "tools/call"
SESSION_CREATE = "openenv/session/create"
SESSION_CLOSE = "openenv/session/close"
NO_MCP = "Environment does not support MCP"
"""OpenEnv's error for a tool method on an env without MCP tools."""


def result(value: Any, request_id: JsonRpcId) -> Reply:
    return {"jsonrpc": "2.0", "id": request_id, "result": value}


def error(code: RpcCode, message: str, request_id: JsonRpcId = None, data: Any = None) -> Reply:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {"code": int(code), "message": message, "data": data},
    }


def parse_request(raw: Any) -> JsonRpcRequest | Reply:
    """The request in a decoded JSON value, or the -32600 reply (with a null id) to send."""
    try:
        return JsonRpcRequest.model_validate(raw)
    except ValidationError as exc:
        return error(RpcCode.INVALID_REQUEST, f"Invalid request: {exc}")


def parse_body(body: bytes) -> JsonRpcRequest | Reply:
    """The request in a ``POST /mcp`` body; -32700 for bad JSON (or bad UTF-8), and for JSON
    that is not an object, as OpenEnv's server answers it."""
    try:
        raw = json.loads(body)
    except ValueError:
        return error(RpcCode.PARSE_ERROR, "Parse error")
    if not isinstance(raw, dict):
        return error(RpcCode.PARSE_ERROR, "Parse error")
    return parse_request(raw)


def requested_session(request: JsonRpcRequest) -> Any:
    """``params.session_id`` when set (OpenEnv ignores an empty one), else ``None``."""
    return request.params.get("session_id") or None


@dataclass(frozen=True)
class ToolStep:
    """Step the session's env with ``action``, OpenEnv's ``ListToolsAction`` or
    ``CallToolAction`` as its tagged dict; :func:`tool_reply` turns the observation into the
    reply."""

    action: dict[str, Any]


def tool_step(request: JsonRpcRequest, unavailable: str | None) -> ToolStep | Reply:
    """What a method other than the session methods asks for. ``unavailable`` is why this env
    serves no MCP tools (``None`` when it does)."""
    if request.method == TOOLS_LIST:
        if unavailable is not None:
            return error(RpcCode.INTERNAL_ERROR, unavailable, request.id)
        return ToolStep({"type": "list_tools"})
    if request.method == TOOLS_CALL:
        name = request.params.get("name")
        if not name:  # checked before MCP support, as OpenEnv does
            return error(RpcCode.INVALID_PARAMS, "Missing 'name' in params", request.id)
        if unavailable is not None:
            return error(RpcCode.INTERNAL_ERROR, unavailable, request.id)
        arguments = request.params.get("arguments", {})
        return ToolStep({"type": "call_tool", "tool_name": name, "arguments": arguments})
    return error(RpcCode.METHOD_NOT_FOUND, f"Method not found: {request.method}", request.id)


def tool_reply(request: JsonRpcRequest, observation: Mapping[str, Any]) -> Reply:
    """The reply to a :class:`ToolStep`'s request, from the observation the step returned.

    ``tools/list`` lists each tool as the MCP SDK names its fields (``inputSchema``), as
    OpenEnv's server does; ``tools/call`` answers with the tool's result (fastmcp's
    ``CallToolResult`` as a dict) or, for a tool that failed, -32603 with the error's message.
    """
    if request.method == TOOLS_LIST:
        failure = (observation.get("metadata") or {}).get("error")
        tools = observation.get("tools")
        if failure or not isinstance(tools, list):
            message = str(failure or "the tools/list step returned no ListToolsObservation")
            return error(RpcCode.INTERNAL_ERROR, message, request.id)
        listed = [
            {"name": t["name"], "description": t["description"], "inputSchema": t["input_schema"]}
            for t in tools
        ]
        return result({"tools": listed}, request.id)
    if "tool_name" not in observation:
        message = "the tools/call step returned no CallToolObservation"
        return error(RpcCode.INTERNAL_ERROR, message, request.id)
    failed = observation.get("error")
    if failed:
        return error(RpcCode.INTERNAL_ERROR, str(failed.get("message")), request.id)
    return result(observation.get("result"), request.id)


def session_created(session_id: str, request_id: JsonRpcId) -> Reply:
    return result({"session_id": session_id}, request_id)


def session_closed(session_id: str, request_id: JsonRpcId, *, now: bool) -> Reply:
    """``now``: the session was closed; else it closes when its WebSocket detaches."""
    if now:
        return result({"session_id": session_id, "closed": True}, request_id)
    return result({"session_id": session_id, "closed": False, "closing": True}, request_id)


def unknown_session(session_id: Any, request_id: JsonRpcId) -> Reply:
    return error(RpcCode.INVALID_PARAMS, f"Unknown session_id: {session_id}", request_id)
