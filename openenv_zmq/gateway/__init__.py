"""An OpenEnv-compatible WebSocket server whose sessions are env slots stepped in batches.

OpenEnv's own clients (``EnvClient``, ``GenericEnvClient``) connect to ``/ws`` unchanged; each
connection owns one env instance of a shared group on the broker. OpenEnv's HTTP routes
(``/metadata``, ``/schema``, stateless ``/reset`` ``/step`` ``/state``, ``/mcp``) are served too.
"""

from openenv_zmq.gateway.app import create_gateway_app
from openenv_zmq.gateway.frames import (
    Close,
    Command,
    ErrorCode,
    ErrorReply,
    Reset,
    StateRequest,
    Step,
    error_frame,
    observation_frame,
    parse_frame,
    state_frame,
)
from openenv_zmq.gateway.http import http_router, mcp_reply
from openenv_zmq.gateway.sessions import SessionPool

__all__ = [
    "Close",
    "Command",
    "ErrorCode",
    "ErrorReply",
    "Reset",
    "SessionPool",
    "StateRequest",
    "Step",
    "create_gateway_app",
    "error_frame",
    "http_router",
    "mcp_reply",
    "observation_frame",
    "parse_frame",
    "state_frame",
]
