"""The OpenEnv baseline: an echo env served by OpenEnv's own server (``openenv-core``) over ``/ws``.

The env is written against openenv-core's classes, not ours, so that the baseline measures
OpenEnv's server as its users run it: one WebSocket session and one env instance per client,
each step a JSON frame each way. :func:`step_sessions` drives sessions with openenv-core's own
``GenericEnvClient``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import queue
import socket
from collections.abc import Callable, Iterator
from typing import Any
from uuid import uuid4

import uvicorn
from openenv.core.env_server import (  # type: ignore[import-untyped]
    Action,
    Environment,
    Observation,
    State,
    create_fastapi_app,
)
from openenv.core.generic_client import GenericEnvClient  # type: ignore[import-untyped]

SERVER_START_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 10.0
MESSAGE_TIMEOUT = 60.0
STEP_DATA = {"message": "hi"}


class OpenEnvEchoAction(Action):  # type: ignore[misc]  # openenv-core ships no type information
    message: str


class OpenEnvEchoObservation(Observation):  # type: ignore[misc]
    echoed_message: str
    message_length: int = 0


class OpenEnvEchoEnvironment(Environment):  # type: ignore[misc]
    """The classic echo env, as OpenEnv's seed has it."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self) -> None:
        super().__init__()
        self._state = State(episode_id=str(uuid4()), step_count=0)

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> OpenEnvEchoObservation:
        self._state = State(episode_id=episode_id or str(uuid4()), step_count=0)
        return OpenEnvEchoObservation(echoed_message="Echo environment ready!", reward=0.0)

    def step(
        self, action: OpenEnvEchoAction, timeout_s: float | None = None, **kwargs: Any
    ) -> OpenEnvEchoObservation:
        self._state.step_count += 1
        return OpenEnvEchoObservation(
            echoed_message=action.message,
            message_length=len(action.message),
            reward=len(action.message) * 0.1,
        )

    @property
    def state(self) -> Any:
        return self._state


def openenv_echo_app(sessions: int) -> Any:
    """OpenEnv's own server app for the echo env, for up to ``sessions`` sessions."""
    # create_fastapi_app is what create_app returns unless ENABLE_WEB_INTERFACE asks for the
    # Gradio page, which would only add startup time here.
    return create_fastapi_app(
        OpenEnvEchoEnvironment,
        OpenEnvEchoAction,
        OpenEnvEchoObservation,
        max_concurrent_envs=sessions,
    )


EVENT_LOOPS = ("asyncio", "uvloop")
"""uvicorn's event loops: ``asyncio`` is what ``pip install openenv-core`` serves on (it needs
plain ``uvicorn``); ``uvloop`` is what uvicorn picks by itself once ``uvicorn[standard]`` is in."""


def _serve(
    port_queue: multiprocessing.Queue[int],
    make_app: Callable[[], Any],
    backlog: int,
    log_level: str,
    loop: str,
) -> None:
    """Serve ``make_app()`` on a free 127.0.0.1 port (put on ``port_queue``) until SIGTERM."""
    app = make_app()
    listener = socket.create_server(("127.0.0.1", 0), backlog=backlog)
    port_queue.put(listener.getsockname()[1])
    config = uvicorn.Config(app, log_level=log_level, access_log=False, loop=loop)
    uvicorn.Server(config).run(sockets=[listener])


@contextlib.contextmanager
def served(
    make_app: Callable[[], Any],
    name: str,
    backlog: int = 128,
    log_level: str = "warning",
    loop: str = "asyncio",
) -> Iterator[str]:
    """A spawned uvicorn process serving ``make_app()`` (a picklable callable) on the event
    ``loop`` (one of :data:`EVENT_LOOPS`); yields its base URL (``http://127.0.0.1:<port>``) and
    stops it with SIGTERM, uvicorn's graceful shutdown."""
    context = multiprocessing.get_context("spawn")
    port_queue: multiprocessing.Queue[int] = context.Queue()
    process = context.Process(
        target=_serve,
        args=(port_queue, make_app, backlog, log_level, loop),
        name=name,
        daemon=True,
    )
    process.start()
    try:
        try:
            port = port_queue.get(timeout=SERVER_START_TIMEOUT)
        except queue.Empty:
            raise TimeoutError(f"{name} did not start within {SERVER_START_TIMEOUT:g} s") from None
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.join(SERVER_STOP_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join()
        process.close()
        port_queue.close()


def openenv_echo_server(
    sessions: int, loop: str = "asyncio"
) -> contextlib.AbstractContextManager[str]:
    """OpenEnv's own server for the echo env, up to ``sessions`` sessions, on the event ``loop``;
    yields its base URL."""
    # OpenEnv's /ws handler closes every socket once more after the client's {"type": "close"},
    # and uvicorn logs each of those races as an error; failures that matter reach the client
    # as error frames, which GenericEnvClient raises.
    return served(
        functools.partial(openenv_echo_app, sessions),
        "OpenEnv's server",
        backlog=max(128, sessions),
        log_level="critical",
        loop=loop,
    )


async def step_sessions(
    base_url: str,
    sessions: int,
    warmup: float,
    duration: float,
    step_data: dict[str, Any] = STEP_DATA,
) -> float:
    """Open ``sessions`` WebSocket sessions, reset them, step them all concurrently (each with
    ``step_data``) for ``warmup`` then ``duration`` seconds; return the steps per second over
    ``duration``."""
    clients = [
        GenericEnvClient(base_url=base_url, message_timeout_s=MESSAGE_TIMEOUT)
        for _ in range(sessions)
    ]
    try:
        await asyncio.gather(*(client.connect() for client in clients))
        await asyncio.gather(*(client.reset() for client in clients))
        loop = asyncio.get_running_loop()
        start = loop.time() + warmup
        end = start + duration

        async def run(client: Any) -> int:
            while loop.time() < start:
                await client.step(step_data)
            steps = 0
            while loop.time() < end:
                await client.step(step_data)
                steps += 1
            return steps

        steps = sum(await asyncio.gather(*(run(client) for client in clients)))
        return steps / (loop.time() - start)
    finally:
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
