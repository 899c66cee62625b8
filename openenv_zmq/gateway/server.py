"""Serve the gateway with uvicorn (``openenv-broker gateway``, ``start --gateway-port``)."""

from __future__ import annotations

import uvicorn

from openenv_zmq.client.sync import BatchClient
from openenv_zmq.gateway.app import create_gateway_app

DEFAULT_HOST = "127.0.0.1"
WORKER_WAIT_SECONDS = 60.0


def run_gateway(
    connect: str,
    env: str,
    port: int,
    host: str = DEFAULT_HOST,
    max_sessions: int = 64,
    idle_timeout_s: float | None = None,
) -> None:
    """Serve OpenEnv's HTTP/WebSocket protocol for ``env`` on ``host:port`` until SIGINT/SIGTERM.

    Every session is one env slot of the broker at ``connect``; a session idle for
    ``idle_timeout_s`` is closed, socket and env slot both. Waits (up to a minute) for a
    worker hosting ``env`` to join first, so a gateway started beside its broker finds one.
    """
    with BatchClient(connect) as client:
        client.wait_for_workers(1, env, timeout=WORKER_WAIT_SECONDS)
    app = create_gateway_app(connect, env, max_sessions=max_sessions, idle_timeout_s=idle_timeout_s)
    uvicorn.run(app, host=host, port=port, log_level="warning", ws_max_size=100 * 2**20)
