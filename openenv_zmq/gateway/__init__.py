"""An OpenEnv-compatible WebSocket server whose sessions are env slots stepped in batches.

OpenEnv's own clients (``EnvClient``, ``GenericEnvClient``, ``MCPToolClient``) connect to ``/ws``
unchanged; each connection owns one env instance of a shared group on the broker. OpenEnv's HTTP
routes (``/metadata``, ``/schema``, stateless ``/reset`` ``/step`` ``/state``, ``/mcp``) are
served too, and MCP requests reach an MCP env's tools through steps of a session's env.

Its packages (FastAPI, uvicorn, websockets) come with the ``gateway`` extra: importing this
package without one of them says so.
"""

from openenv_zmq.extras import missing_extra

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
    import websockets  # noqa: F401
except ModuleNotFoundError as exc:
    raise missing_extra("gateway", "the gateway", exc) from exc

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
from openenv_zmq.gateway.sessions import SessionRegistry

__all__ = [
    "Close",
    "Command",
    "ErrorCode",
    "ErrorReply",
    "Mcp",
    "McpHandler",
    "McpReply",
    "Reset",
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
