"""Serve the gateway with uvicorn (``openenv-broker gateway``, ``start --gateway-port``)."""

from __future__ import annotations

from dataclasses import dataclass

import uvicorn

from openenv_zmq.client.sync import BatchClient
from openenv_zmq.curve import CurveKeys
from openenv_zmq.gateway.app import DEFAULT_MAX_SESSIONS, create_gateway_app
from openenv_zmq.gateway.header_timeout import DEFAULT_HEADER_TIMEOUT_S, header_timeout_protocol
from openenv_zmq.proctitle import name_process
from openenv_zmq.registry import add_app_dir

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_FRAME_MB = 100.0
"""As OpenEnv's clients: a bigger frame closes the connection with 1009 (message too big)."""
WORKER_WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class GatewaySpec:
    """What a gateway serves, and where."""

    env: str
    port: int
    host: str = DEFAULT_HOST
    max_sessions: int = DEFAULT_MAX_SESSIONS
    idle_timeout_s: float | None = None
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    """A connection whose request headers take longer is closed (slow-header clients)."""
    web: bool | None = None
    """Serve the web interface at ``/web/``; ``None``: as ``ENABLE_WEB_INTERFACE`` says."""
    max_frame_mb: float = DEFAULT_MAX_FRAME_MB
    app_dir: str | None = None
    """A folder to import the env from (for ``/schema`` and ``/metadata``), as the workers do."""


def run_gateway(connect: str, spec: GatewaySpec, curve: CurveKeys | None = None) -> None:
    """Serve OpenEnv's HTTP/WebSocket protocol for ``spec.env`` until SIGINT/SIGTERM.

    Every session is one env slot of the broker at ``connect``, reached with the CURVE keys
    ``curve`` when given. Waits (up to a minute) for a worker hosting the env to join first, so
    a gateway started beside its broker finds one. Connections whose request headers are
    ``spec.header_timeout_s`` late are closed.
    """
    name_process("gateway", f"http://{spec.host}:{spec.port}", connect)
    http = header_timeout_protocol(spec.header_timeout_s)
    if spec.app_dir is not None:
        add_app_dir(spec.app_dir)
    try:
        with BatchClient(connect, curve_dir=curve) as client:
            client.wait_for_workers(1, spec.env, timeout=WORKER_WAIT_SECONDS)
    except KeyboardInterrupt:  # Ctrl-C before serving ends it as quietly as uvicorn does after
        return
    app = create_gateway_app(
        connect,
        spec.env,
        max_sessions=spec.max_sessions,
        idle_timeout_s=spec.idle_timeout_s,
        web=spec.web,
        curve=curve,
    )
    uvicorn.run(
        app,
        host=spec.host,
        port=spec.port,
        log_level="warning",
        ws_max_size=int(spec.max_frame_mb * 2**20),
        http=http,
    )
