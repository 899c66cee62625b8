"""The FastAPI app: OpenEnv's ``/ws``, ``/health`` and HTTP routes over a :class:`SlotPool`.

The ``/ws`` route is a thin pump: frames are parsed by :mod:`frames`, envs are stepped by the
pool, ``mcp`` frames answered by :mod:`mcp`. Each connection is served one frame at a time, so
pipelined requests are answered in order. The HTTP routes live in :mod:`openenv_zmq.gateway.http`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from openenv_zmq.client.aio import AsyncBatchClient
from openenv_zmq.curve import CurveKeys
from openenv_zmq.errors import ActionValidationError, OpenEnvZmqError
from openenv_zmq.gateway.frames import (
    Close,
    ErrorCode,
    ErrorReply,
    Mcp,
    McpReply,
    Reset,
    StateRequest,
    Step,
    action_error,
    error_frame,
    mcp_frame,
    observation_frame,
    parse_frame,
    state_frame,
)
from openenv_zmq.gateway.http import http_router
from openenv_zmq.gateway.mcp import McpHandler, mcp_unavailable
from openenv_zmq.gateway.sessions import (
    Session,
    SessionRegistry,
    SessionUnavailable,
    capacity_message,
)
from openenv_zmq.gateway.web import web_interface_enabled, web_router
from openenv_zmq.pool.slots import SlotPool

DEFAULT_MAX_SESSIONS = 64
IDLE_CLOSE_CODE = 1000
UNSUPPORTED_DATA_CODE = 1003
BINARY_FRAME = "binary frames are not part of OpenEnv's protocol: send each message as JSON text"


async def answer(pool: SlotPool, slot: int, command: Reset | Step | StateRequest) -> str:
    """The reply frame to one command on ``slot``; env failures become error frames."""
    try:
        if isinstance(command, Reset):
            return observation_frame(await pool.reset(slot, command.seed, command.kwargs))
        if isinstance(command, Step):
            return observation_frame(await pool.step(slot, command.action))
        return state_frame(await pool.state(slot))
    except ActionValidationError as exc:
        return action_error(exc).frame()
    except OpenEnvZmqError as exc:
        return error_frame(ErrorCode.EXECUTION_ERROR, str(exc))


async def open_session(websocket: WebSocket, sessions: SessionRegistry) -> Session | None:
    """The connection's session: the one named by ``?session_id=`` (opened over ``POST /mcp``),
    else a new one of its own. ``None`` after telling the client why it gets none, as OpenEnv
    does (``SESSION_ERROR`` or ``CAPACITY_REACHED``, then close)."""
    wanted = websocket.query_params.get("session_id")
    if wanted:
        try:
            return sessions.attach(wanted)
        except SessionUnavailable as exc:
            await websocket.send_text(error_frame(ErrorCode.SESSION_ERROR, str(exc)))
            await websocket.close()
            return None
    session = sessions.open(attached=True)
    if session is None:
        pool = sessions.pool
        await websocket.send_text(
            error_frame(
                ErrorCode.CAPACITY_REACHED,
                capacity_message(pool),
                active_sessions=pool.active_sessions,
                max_sessions=pool.max_sessions,
            )
        )
        await websocket.close()
    return session


async def serve_session(
    websocket: WebSocket, mcp: McpHandler, idle_timeout_s: float | None = None
) -> None:
    """One OpenEnv session on ``mcp``'s sessions, its slot freed as soon as the connection ends
    (a session opened over ``POST /mcp`` stays open, detached).

    A session that sends no frame for ``idle_timeout_s`` seconds is closed (code 1000, reason
    given); the time spent answering a frame does not count as idle.
    """
    await websocket.accept()
    sessions = mcp.sessions
    session = await open_session(websocket, sessions)
    if session is None:
        return
    try:
        while True:
            try:
                # asyncio.timeout, not wait_for: no task wrapped around every frame's receive
                async with asyncio.timeout(idle_timeout_s):
                    message = await websocket.receive()
            except TimeoutError:
                # OpenEnv's reaper frees the env but leaves the socket open; closing it tells
                # the client at once instead of at its next request.
                reason = f"session idle for more than {idle_timeout_s:g} s"
                await websocket.close(IDLE_CLOSE_CODE, reason)
                return
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                # OpenEnv's server ends the session on a binary frame too (SESSION_ERROR).
                await websocket.send_text(error_frame(ErrorCode.SESSION_ERROR, BINARY_FRAME))
                await websocket.close(UNSUPPORTED_DATA_CODE, "binary frame")
                return
            command = parse_frame(text)
            if isinstance(command, Close):
                await websocket.close(1000)
                return
            if isinstance(command, ErrorReply | McpReply):
                await websocket.send_text(command.frame())
            elif isinstance(command, Mcp):
                await websocket.send_text(mcp_frame(await mcp.handle(command.request, session)))
            else:
                async with sessions.use(session) as slot:
                    reply = await answer(sessions.pool, slot, command)
                await websocket.send_text(reply)
    except WebSocketDisconnect:
        return
    except Exception as exc:  # the session is broken: tell the client, as OpenEnv does, and end
        await websocket.send_text(error_frame(ErrorCode.SESSION_ERROR, str(exc)))
        await websocket.close()
    finally:
        await sessions.detach(session)


def create_gateway_app(
    broker_address: str,
    env: str,
    max_sessions: int = DEFAULT_MAX_SESSIONS,
    idle_timeout_s: float | None = None,
    web: bool | None = None,
    curve: CurveKeys | None = None,
) -> FastAPI:
    """An OpenEnv-compatible server for ``env``: one session per ``/ws`` connection, up to
    ``max_sessions`` at once, stepped in batches on the broker at ``broker_address``.

    ``/ws`` sessions idle for ``idle_timeout_s`` seconds are closed (``None``: never), and so
    are sessions opened over ``POST /mcp`` that no connection serves. The stateless HTTP
    ``/reset``, ``/step`` and ``/state`` borrow a slot per request from the same
    ``max_sessions``. The broker must be reachable at startup (else
    ``BrokerUnreachable`` fails the lifespan). Raises ``ValueError`` for a timeout <= 0.
    ``web`` serves OpenEnv's web interface at ``/web/`` (``None``: as ``ENABLE_WEB_INTERFACE``).
    ``curve``: the gateway's CURVE keys, when the broker requires them.
    """
    if idle_timeout_s is not None and idle_timeout_s <= 0:
        raise ValueError(f"idle_timeout_s must be > 0, got {idle_timeout_s}")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncBatchClient(broker_address, curve_dir=curve) as client:
            pool = await SlotPool.open(client, env, max_sessions, as_dicts=True)
            sessions = SessionRegistry(pool, idle_timeout_s)
            app.state.pool = pool
            app.state.mcp = McpHandler(sessions, mcp_unavailable(env))
            reaper = asyncio.create_task(sessions.reap())
            try:
                yield
            finally:
                reaper.cancel()
                await asyncio.gather(reaper, return_exceptions=True)
                await pool.close()

    app = FastAPI(
        title=f"openenv-zmq gateway: {env}", version=version("openenv-zmq"), lifespan=lifespan
    )
    app.include_router(http_router(env))
    if web or (web is None and web_interface_enabled()):
        app.include_router(web_router())

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.websocket("/ws")
    async def websocket_endpoint(websocket: WebSocket) -> None:
        await serve_session(websocket, app.state.mcp, idle_timeout_s)

    return app
