"""An OpenEnv-compatible WebSocket server whose sessions are env slots stepped in batches.

OpenEnv's own clients (``EnvClient``, ``GenericEnvClient``, ``MCPToolClient``) connect to ``/ws``
unchanged; each connection owns one env instance of a shared group on the broker. OpenEnv's HTTP
routes (``/metadata``, ``/schema``, stateless ``/reset`` ``/step`` ``/state``, ``/mcp``) are
served too, and MCP requests reach an MCP env's tools through steps of a session's env.
"""

from openenv_zmq.gateway.app import create_gateway_app
from openenv_zmq.gateway.frames import (
    Close,
    Command,
    ErrorCode,
    ErrorReply,
    Mcp,
    McpReply,
    Reset,
    StateRequest,
    Step,
    error_frame,
    mcp_frame,
    observation_frame,
    parse_frame,
    state_frame,
)
from openenv_zmq.gateway.http import http_router
from openenv_zmq.gateway.mcp import McpHandler
from openenv_zmq.gateway.sessions import SessionPool, SessionRegistry

__all__ = [
    "Close",
    "Command",
    "ErrorCode",
    "ErrorReply",
    "Mcp",
    "McpHandler",
    "McpReply",
    "Reset",
    "SessionPool",
    "SessionRegistry",
    "StateRequest",
    "Step",
    "create_gateway_app",
    "error_frame",
    "http_router",
    "mcp_frame",
    "observation_frame",
    "parse_frame",
    "state_frame",
]
