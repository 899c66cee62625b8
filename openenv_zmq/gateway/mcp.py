"""OpenEnv's MCP methods on the gateway's sessions, for ``POST /mcp`` and ``mcp`` frames on ``/ws``.

Unlike OpenEnv's server, which calls the env's FastMCP client directly, a tool call here is a
step of the session's env with OpenEnv's ``ListToolsAction`` / ``CallToolAction``: it is batched
with every other session's steps, and it counts in the env's ``step_count``.
"""

from __future__ import annotations

from typing import Any

from openenv_zmq.errors import EnvNotFound, OpenEnvZmqError
from openenv_zmq.gateway.jsonrpc import (
    NO_MCP,
    SESSION_CLOSE,
    SESSION_CREATE,
    JsonRpcRequest,
    Reply,
    RpcCode,
    ToolStep,
    error,
    requested_session,
    session_closed,
    session_created,
    tool_reply,
    tool_step,
    unknown_session,
)
from openenv_zmq.gateway.sessions import (
    Session,
    SessionRegistry,
    SessionUnavailable,
    capacity_message,
)
from openenv_zmq.registry import mcp_actions, resolve_env


def mcp_unavailable(env: str) -> str | None:
    """Why ``env`` serves no MCP tools here, or ``None`` when it does: it is an OpenEnv
    ``MCPEnvironment``, known by importing it as the workers do."""
    try:
        cls = resolve_env(env)
    except EnvNotFound as exc:
        return f"the gateway cannot import {env!r}, so it cannot tell its MCP tools ({exc})"
    return None if mcp_actions(cls) else NO_MCP


class McpHandler:
    """Answers JSON-RPC requests with the sessions of a :class:`SessionRegistry`.

    ``unavailable`` is why the env serves no MCP tools (see :func:`mcp_unavailable`); the
    session methods work for any env, as in OpenEnv.
    """

    def __init__(self, sessions: SessionRegistry, unavailable: str | None) -> None:
        self.sessions = sessions
        self.unavailable = unavailable

    async def handle(self, request: JsonRpcRequest, session: Session | None = None) -> Reply:
        """The reply to ``request``. ``session`` is the ``/ws`` connection's own for a request
        that came in an ``mcp`` frame: it is the one used, whatever ``params.session_id`` says
        (as in OpenEnv). Without either, a tool call runs on a slot borrowed for the request,
        in a new episode. Never raises for a failing env: that is a -32603 reply."""
        if request.method == SESSION_CREATE:
            return self._create(request, session)
        if request.method == SESSION_CLOSE:
            return await self._close(request, session)
        if session is None:
            wanted = requested_session(request)
            if wanted is not None:
                session = self.sessions.get(wanted)
                if session is None:
                    return unknown_session(wanted, request.id)
        step = tool_step(request, self.unavailable)
        if not isinstance(step, ToolStep):
            return step
        try:
            if session is not None:
                async with self.sessions.use(session) as slot:
                    observation = await self.sessions.pool.step(slot, step.action)
                return tool_reply(request, observation)
            return await self._on_borrowed_slot(request, step)
        except SessionUnavailable as exc:
            return error(RpcCode.INVALID_PARAMS, str(exc), request.id)
        except OpenEnvZmqError as exc:
            return error(RpcCode.INTERNAL_ERROR, str(exc), request.id)

    async def _on_borrowed_slot(self, request: JsonRpcRequest, step: ToolStep) -> Reply:
        pool = self.sessions.pool
        slot = pool.acquire()
        if slot is None:
            return self._at_capacity(request)
        try:
            return tool_reply(request, await pool.step(slot, step.action))
        finally:
            pool.release(slot)

    def _create(self, request: JsonRpcRequest, session: Session | None) -> Reply:
        if session is None:
            session = self.sessions.open()
            if session is None:
                return self._at_capacity(request)
        return session_created(session.id, request.id)

    async def _close(self, request: JsonRpcRequest, session: Session | None) -> Reply:
        target = requested_session(request)
        if target is None:
            message = "Invalid params - 'session_id' is required"
            return error(RpcCode.INVALID_PARAMS, message, request.id)
        if session is not None and target == session.id:
            message = "Cannot close active WebSocket-managed session via MCP method"
            return error(RpcCode.INVALID_REQUEST, message, request.id)
        found = self.sessions.get(target)
        if found is None:
            return unknown_session(target, request.id)
        return session_closed(found.id, request.id, now=await self.sessions.close(found))

    def _at_capacity(self, request: JsonRpcRequest) -> Reply:
        pool = self.sessions.pool
        data: dict[str, Any] = {
            "active_sessions": pool.active_sessions,
            "max_sessions": pool.max_sessions,
        }
        return error(RpcCode.SERVER_ERROR, capacity_message(pool), request.id, data)
