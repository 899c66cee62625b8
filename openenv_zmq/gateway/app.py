"""The FastAPI app: OpenEnv's ``/ws`` and ``/health`` over a :class:`SessionPool`.

The route is a thin pump: frames are parsed by :mod:`frames`, envs are stepped by the pool.
Each connection is served one frame at a time, so pipelined requests are answered in order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from openenv_zmq.client.aio import AsyncBatchClient
from openenv_zmq.errors import ActionValidationError, OpenEnvZmqError
from openenv_zmq.gateway.frames import (
    Close,
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
from openenv_zmq.gateway.sessions import SessionPool


async def answer(pool: SessionPool, slot: int, command: Reset | Step | StateRequest) -> str:
    """The reply frame to one command on ``slot``; env failures become error frames."""
    try:
        if isinstance(command, Reset):
            return observation_frame(await pool.reset(slot, command.seed, command.kwargs))
        if isinstance(command, Step):
            return observation_frame(await pool.step(slot, command.action))
        return state_frame(await pool.state(slot))
    except ActionValidationError as exc:
        # Only pydantic's text crossed the wire (the gateway could not import the action model).
        return error_frame(ErrorCode.VALIDATION_ERROR, str(exc), errors=[])
    except OpenEnvZmqError as exc:
        return error_frame(ErrorCode.EXECUTION_ERROR, str(exc))


async def serve_session(websocket: WebSocket, pool: SessionPool) -> None:
    """One OpenEnv session: a slot for the connection's lifetime, freed as soon as it ends."""
    await websocket.accept()
    slot = pool.acquire()
    if slot is None:
        await websocket.send_text(
            error_frame(
                ErrorCode.CAPACITY_REACHED,
                f"Server at capacity ({pool.max_sessions} sessions)",
                active_sessions=pool.active_sessions,
                max_sessions=pool.max_sessions,
            )
        )
        await websocket.close()
        return
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                text = (message.get("bytes") or b"").decode("utf-8", errors="replace")
            command = parse_frame(text, pool.action_model)
            if isinstance(command, Close):
                await websocket.close(1000)
                return
            if isinstance(command, ErrorReply):
                await websocket.send_text(command.frame())
            else:
                await websocket.send_text(await answer(pool, slot, command))
    except WebSocketDisconnect:
        return
    except Exception as exc:  # the session is broken: tell the client, as OpenEnv does, and end
        await websocket.send_text(error_frame(ErrorCode.SESSION_ERROR, str(exc)))
        await websocket.close()
    finally:
        pool.release(slot)


def create_gateway_app(broker_address: str, env: str, max_sessions: int = 64) -> FastAPI:
    """An OpenEnv-compatible server for ``env``: one session per ``/ws`` connection, up to
    ``max_sessions`` at once, stepped in batches on the broker at ``broker_address``.

    The broker must be reachable at startup (else ``BrokerUnreachable`` fails the lifespan).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncBatchClient(broker_address) as client:
            pool = await SessionPool.open(client, env, max_sessions)
            app.state.pool = pool
            try:
                yield
            finally:
                await pool.close()

    app = FastAPI(title=f"openenv-zmq gateway: {env}", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.websocket("/ws")
    async def websocket_endpoint(websocket: WebSocket) -> None:
        await serve_session(websocket, app.state.pool)

    return app
