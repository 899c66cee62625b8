"""The installed OpenEnv's own clients (openenv-core 0.3 or openenv 0.10) against the gateway,
serving the idiom envs from real broker and worker processes."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openenv.core.env_server.mcp_types import (  # type: ignore[import-untyped]
    CallToolAction,
    CallToolObservation,
)
from openenv.core.generic_client import GenericEnvClient  # type: ignore[import-untyped]
from openenv.core.mcp_client import MCPToolClient  # type: ignore[import-untyped]

from openenv_zmq.gateway import create_gateway_app
from tests.idiom_envs import GRID, MCP_ECHO, TICTACTOE
from tests.processes import Broker, running, serving


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker for the module: a worker importing OpenEnv takes seconds to start."""
    with running(tmp_path_factory.mktemp("procs")) as procs:
        yield procs.broker(workers=1, envs=(MCP_ECHO, TICTACTOE, GRID))


def assert_metadata(result: Any, expected: dict[str, Any]) -> None:
    """The observation's metadata is where openenv 0.10 puts it: inside the observation, and
    in the ``StepResult`` of a client whose ``StepResult`` has the field (0.10's)."""
    assert result.observation["metadata"] == expected
    if "metadata" in {f.name for f in dataclasses.fields(result)}:
        assert result.metadata == (expected or None)


def test_generic_client_plays_tictactoe(broker: Broker) -> None:
    async def play(url: str) -> None:
        async with GenericEnvClient(base_url=url) as env:
            reset = await env.reset()
            assert reset.observation["legal_actions"] == list(range(9))
            assert reset.reward == 0.0 and reset.done is False
            assert_metadata(reset, {})
            moved = await env.step({"position": 4})
            assert moved.observation["board"] == [["O", " ", " "], [" ", "X", " "], [" "] * 3]
            assert moved.reward == 0.0 and moved.done is False
            illegal = await env.step({"position": 0})
            assert illegal.done is True and illegal.reward == -1.0
            assert_metadata(illegal, {"error": "illegal move: 0"})
            with pytest.raises(RuntimeError, match="EXECUTION_ERROR"):
                await env.step({"position": 1})  # the game is over: the env raises
            with pytest.raises(RuntimeError, match="VALIDATION_ERROR"):
                await env.step({"cell": 1})
            state = await env.state()
            assert state["moves"] == [4, 0] and state["step_count"] == 2

    with serving(create_gateway_app(broker.frontend, TICTACTOE, max_sessions=2)) as url:
        asyncio.run(play(url))


def test_generic_sync_client_walks_the_async_grid(broker: Broker) -> None:
    with (
        serving(create_gateway_app(broker.frontend, GRID, max_sessions=2)) as url,
        GenericEnvClient(base_url=url).sync() as env,
    ):
        reset = env.reset()
        assert (reset.observation["x"], reset.observation["y"]) == (0, 0)
        assert_metadata(reset, {})
        for move in ("RIGHT", "RIGHT", "DOWN"):
            walked = env.step({"move": move})
            assert walked.reward == -0.25 and walked.done is False
            assert_metadata(walked, {"step_penalty": 0.25})
        goal = env.step({"move": "DOWN"})
        assert (goal.observation["x"], goal.observation["y"]) == (2, 2)
        assert goal.reward == 0.75 and goal.done is True
        assert env.state()["step_count"] == 4


def test_mcp_tool_client_on_the_mcp_echo_env(broker: Broker) -> None:
    async def session(url: str) -> int:
        async with MCPToolClient(base_url=url) as env:
            reset = await env.reset()
            assert reset.observation.metadata["status"] == "ready"
            tools = {tool.name: tool for tool in await env.list_tools()}
            assert set(tools) == {"echo_message", "echo_with_length"}
            assert tools["echo_message"].input_schema["required"] == ["message"]
            assert await env.call_tool("echo_message", message="hi") == "hi"
            measured = await env.call_tool("echo_with_length", message="abc")
            assert measured == {"message": "abc", "length": 3}
            with pytest.raises(RuntimeError, match="Tool 'nope' failed: Unknown tool: 'nope'"):
                await env.call_tool("nope")
            with pytest.raises(RuntimeError, match=r"(?s)Tool 'echo_message' failed: .*wrong"):
                await env.call_tool("echo_message", wrong="argument")
            assert await env.call_tool("echo_message", message="still here") == "still here"
            steps: int = (await env.state()).step_count
            return steps

    # One slot: the second client gets in only if the first one's session was freed.
    with serving(create_gateway_app(broker.frontend, MCP_ECHO, max_sessions=1)) as url:
        for _ in range(2):
            # tools/list and every tool call were steps of the session's env (OpenEnv's server
            # calls the tools beside the env, and counts none of them)
            assert asyncio.run(session(url)) == 6


def test_schema_of_an_mcp_env_is_openenv_s_tool_call_models(broker: Broker) -> None:
    with serving(create_gateway_app(broker.frontend, MCP_ECHO, max_sessions=1)) as url:
        schema = httpx.get(f"{url}/schema", timeout=10).json()
    assert schema["action"] == CallToolAction.model_json_schema()
    assert schema["observation"] == CallToolObservation.model_json_schema()
    assert schema["state"]["title"] == "McpEchoState"


def test_metadata_is_what_the_envs_own_get_metadata_says(broker: Broker) -> None:
    with serving(create_gateway_app(broker.frontend, GRID, max_sessions=1)) as url:
        metadata = httpx.get(f"{url}/metadata", timeout=10).json()
    assert metadata["name"] == "grid_world"
    assert metadata["version"] == "0.1.0" and metadata["author"] == "openenv-zmq tests"
