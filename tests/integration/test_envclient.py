"""Our EnvClient and EchoEnv against openenv-core's own server and client, on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from uuid import uuid4

import pytest
from echo_env import EchoAction, EchoEnv
from openenv.core import GenericEnvClient  # type: ignore[import-untyped]
from openenv.core.env_server import (  # type: ignore[import-untyped]
    Action,
    Environment,
    Observation,
    State,
    create_fastapi_app,
)
from websockets.asyncio.server import ServerConnection, serve

from openenv_zmq.client.envclient import LOOP_THREAD_NAME, ws_endpoint
from openenv_zmq.errors import EnvServerError, RemoteError, RequestTimeout, TransportError
from tests.processes import free_port, serving

SLOW_S = 0.5


class OEEchoAction(Action):  # type: ignore[misc]  # openenv-core ships no type information
    message: str


class OEEchoObservation(Observation):  # type: ignore[misc]
    echoed_message: str
    message_length: int = 0


class OEEchoEnvironment(Environment):  # type: ignore[misc]
    """The seed's echo env on openenv-core's classes; "boom" raises and "slow" sleeps.

    Not bench/openenv_server.py's env: these tests need the failing and slow steps, and a server
    in a thread of the test process starts without spawning a Python.
    """

    def __init__(self) -> None:
        super().__init__()
        self._state = State(episode_id=str(uuid4()), step_count=0)

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> OEEchoObservation:
        self._state = State(episode_id=episode_id or str(uuid4()), step_count=0)
        return OEEchoObservation(echoed_message="Echo environment ready!", reward=0.0)

    def step(
        self, action: OEEchoAction, timeout_s: float | None = None, **kwargs: Any
    ) -> OEEchoObservation:
        if action.message == "boom":
            raise ValueError("boom requested")
        if action.message == "slow":
            time.sleep(SLOW_S)
        self._state.step_count += 1
        length = len(action.message)
        return OEEchoObservation(
            echoed_message=action.message, message_length=length, reward=length * 0.1
        )

    @property
    def state(self) -> Any:
        return self._state


@pytest.fixture
def base_url() -> Iterator[str]:
    """openenv-core's FastAPI app (one session at a time) under uvicorn in a thread."""
    app = create_fastapi_app(OEEchoEnvironment, OEEchoAction, OEEchoObservation)
    # OpenEnv's /ws handler closes each socket once more after the client's close frame, and
    # uvicorn logs every such race as an error; what matters reaches the client as error frames.
    with serving(app, log_level="critical", access_log=False, ws="websockets-sansio") as url:
        yield url


class ExtraFieldEchoEnv(EchoEnv):
    """Sends a field the action model forbids, to provoke VALIDATION_ERROR."""

    def _step_payload(self, action: EchoAction) -> dict[str, Any]:
        return {"message": action.message, "loud": True}


def test_ws_endpoint_converts_schemes() -> None:
    assert ws_endpoint("http://h:1") == "ws://h:1/ws"
    assert ws_endpoint("https://h/") == "wss://h/ws"
    assert ws_endpoint("ws://h:1") == "ws://h:1/ws"
    assert ws_endpoint("wss://h") == "wss://h/ws"
    assert ws_endpoint("h:1") == "ws://h:1/ws"


def test_async_reset_step_state(base_url: str) -> None:
    async def run() -> None:
        async with EchoEnv(base_url=base_url) as client:
            result = await client.reset()
            assert result.observation.echoed_message == "Echo environment ready!"
            assert result.reward == 0.0
            assert result.done is False
            result = await client.step(EchoAction(message="Hello, World!"))
            assert result.observation.echoed_message == "Hello, World!"
            assert result.observation.message_length == 13
            assert result.reward == pytest.approx(1.3)
            assert result.observation.reward == pytest.approx(1.3)
            await client.step(EchoAction(message="again"))
            state = await client.state()
            assert state.step_count == 2
            assert state.episode_id
            await client.reset(episode_id="ep-7")
            assert (await client.state()).model_dump() == {"episode_id": "ep-7", "step_count": 0}

    asyncio.run(run())


def test_sync_wrapper(base_url: str) -> None:
    with EchoEnv(base_url=base_url).sync() as client:
        assert client.reset().observation.echoed_message == "Echo environment ready!"
        result = client.step(EchoAction(message="Hello, World!"))
        assert result.observation.echoed_message == "Hello, World!"
        assert result.reward == pytest.approx(1.3)
        assert client.state().step_count == 1
    # The session was freed (the server takes one at a time) and the wrapper can start again.
    assert not loop_threads()
    with client:
        client.reset()
        assert client.state().step_count == 0
    assert not loop_threads()


def loop_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == LOOP_THREAD_NAME]


def test_plain_with_on_async_client_points_to_sync(base_url: str) -> None:
    with pytest.raises(TypeError, match="sync"), EchoEnv(base_url=base_url):
        pass


def test_ws_base_url_and_lazy_connect(base_url: str) -> None:
    ws_url = base_url.replace("http://", "ws://") + "/"

    async def run() -> None:
        client = EchoEnv(base_url=ws_url)
        assert client.ws_url == ws_url + "ws"
        try:
            await client.reset()
            result = await client.step(EchoAction(message="hi"))
            assert result.observation.echoed_message == "hi"
        finally:
            await client.close()

    asyncio.run(run())


def test_error_frames_raise_env_server_error_and_keep_the_session(base_url: str) -> None:
    async def run() -> None:
        async with ExtraFieldEchoEnv(base_url=base_url) as client:
            await client.reset()
            with pytest.raises(EnvServerError) as invalid:
                await client.step(EchoAction(message="x"))
            assert invalid.value.code == "VALIDATION_ERROR"
            assert invalid.value.data["errors"]
            assert str(invalid.value).startswith("VALIDATION_ERROR: ")
        async with EchoEnv(base_url=base_url) as client:
            await client.reset()
            await client.step(EchoAction(message="one"))
            with pytest.raises(RemoteError, match="EXECUTION_ERROR: boom requested") as failed:
                await client.step(EchoAction(message="boom"))
            assert isinstance(failed.value, EnvServerError)
            assert failed.value.code == "EXECUTION_ERROR"
            assert (await client.state()).step_count == 1

    asyncio.run(run())


def test_capacity_reached_is_an_error_frame_then_a_new_session(base_url: str) -> None:
    async def run() -> None:
        second = EchoEnv(base_url=base_url)
        try:
            async with EchoEnv(base_url=base_url) as first:
                await first.reset()
                with pytest.raises(EnvServerError) as refused:
                    await second.reset()
                assert refused.value.code == "CAPACITY_REACHED"
                assert refused.value.data["max_sessions"] == 1
            # The server frees the first session on its own schedule after the close frame.
            deadline = time.monotonic() + 5.0
            while not await reset_or_capacity(second):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert (await second.step(EchoAction(message="ok"))).observation.echoed_message == "ok"
        finally:
            await second.close()

    asyncio.run(run())


async def reset_or_capacity(client: EchoEnv) -> bool:
    """Whether ``reset()`` got a session; False if the server was still at capacity."""
    try:
        await client.reset()
    except EnvServerError as exc:
        if exc.code != "CAPACITY_REACHED":
            raise
        return False
    return True


def test_message_timeout_drops_the_connection(base_url: str) -> None:
    async def run() -> None:
        async with EchoEnv(base_url=base_url, message_timeout_s=0.1) as client:
            await client.reset()
            await client.step(EchoAction(message="one"))
            with pytest.raises(RequestTimeout, match="'step'"):
                await client.step(EchoAction(message="slow"))
            # The late reply must not answer the next request: a new connection is a new session.
            await asyncio.sleep(SLOW_S)
            assert (await client.state()).step_count == 0

    asyncio.run(run())


def test_connect_to_unused_port_fails_fast() -> None:
    async def run() -> None:
        client = EchoEnv(base_url=f"http://127.0.0.1:{free_port()}", connect_timeout_s=2.0)
        start = time.monotonic()
        with pytest.raises(TransportError, match="could not connect"):
            await client.reset()
        assert time.monotonic() - start < 1.0

    asyncio.run(run())
    with pytest.raises(TransportError), EchoEnv(base_url=f"http://127.0.0.1:{free_port()}").sync():
        pass
    assert not loop_threads()


async def recorded_frames(drive: Callable[[str], Any]) -> list[dict[str, Any]]:
    """Frames a client sends to a stub server that answers like openenv-core's."""
    frames: list[dict[str, Any]] = []
    replies = {
        "reset": {"observation": {"echoed_message": "r", "message_length": 0}, "reward": 0.0},
        "step": {"observation": {"echoed_message": "s", "message_length": 1}, "reward": 0.1},
    }

    async def handler(ws: ServerConnection) -> None:
        async for raw in ws:
            frame = json.loads(raw)
            frames.append(frame)
            kind = frame["type"]
            if kind == "state":
                await ws.send(json.dumps({"type": "state", "data": {"step_count": 1}}))
            elif kind in replies:
                data = {**replies[kind], "done": False}
                await ws.send(json.dumps({"type": "observation", "data": data}))

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        await drive(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 5.0
        while frames[-1:] != [{"type": "close"}]:
            assert time.monotonic() < deadline, frames
            await asyncio.sleep(0.01)
    return frames


def test_frames_match_openenv_core_client() -> None:
    async def ours(url: str) -> None:
        async with EchoEnv(base_url=url) as client:
            await client.reset(seed=3)
            await client.step(EchoAction(message="hi"))
            await client.state()

    async def theirs(url: str) -> None:
        async with GenericEnvClient(base_url=url) as client:
            await client.reset(seed=3)
            await client.step({"message": "hi"})
            await client.state()

    mine = asyncio.run(recorded_frames(ours))
    assert mine == asyncio.run(recorded_frames(theirs))
    assert mine == [
        {"type": "reset", "data": {"seed": 3}},
        {"type": "step", "data": {"message": "hi"}},
        {"type": "state"},
        {"type": "close"},
    ]
