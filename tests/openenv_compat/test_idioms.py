"""Envs written in the idioms of OpenEnv's own environments run here unchanged.

These tests run against whichever OpenEnv package is installed: ``openenv-core`` 0.3 in the main
test environment, ``openenv`` 0.10 in the second one ``.ci/run`` builds. Through the in-process
transport: the real broker and worker cores and the worker's call runner, no sockets.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openenv.core.env_server.mcp_types import (  # type: ignore[import-untyped]
    CallToolAction,
    CallToolObservation,
    ListToolsAction,
    ListToolsObservation,
)

from broker.inprocess import InProcessBroker
from openenv_zmq import BatchClient
from openenv_zmq.errors import ActionValidationError, EnvExecutionError
from openenv_zmq.registry import EnvTypes, env_types, resolve_env
from tests.idiom_envs import GRID, MCP_ECHO, TICTACTOE
from tests.idiom_envs.models import (
    Direction,
    GridAction,
    GridObservation,
    GridState,
    McpEchoState,
    TicTacToeAction,
    TicTacToeObservation,
    TicTacToeState,
)
from tests.idiom_envs.server.grid_world_environment import GridWorldEnvironment


@pytest.fixture(scope="module")
def client() -> Iterator[BatchClient]:
    with (
        InProcessBroker([MCP_ECHO, TICTACTOE, GRID], workers=2, capacity=64) as broker,
        BatchClient(transport=broker.connect()) as client,
    ):
        yield client


def test_mcp_tool_calls_batch_like_any_other_action(client: BatchClient) -> None:
    envs = client.make(MCP_ECHO, 4)
    first = envs.reset()
    assert first.observations[0].metadata["status"] == "ready"
    r = envs.step(
        [
            ListToolsAction(),
            CallToolAction(tool_name="echo_message", arguments={"message": "hi"}),
            CallToolAction(tool_name="echo_with_length", arguments={"message": "abc"}),
            # untagged, as OpenEnv's server takes it for an MCP env served with CallToolAction
            {"tool_name": "echo_message", "arguments": {"message": "again"}},
        ]
    )
    r.raise_for_errors()
    tools, echoed, measured, again = r.observations
    assert type(tools) is ListToolsObservation
    assert {t.name for t in tools.tools} == {"echo_message", "echo_with_length"}
    assert type(echoed) is CallToolObservation and echoed.error is None
    assert echoed.result["data"] == "hi" and again.result["data"] == "again"
    assert measured.result["data"] == {"message": "abc", "length": 3}
    states = envs.state()
    assert all(type(s) is McpEchoState and s.step_count == 1 for s in states)


def test_mcp_tool_errors_come_back_as_openenv_reports_them(client: BatchClient) -> None:
    envs = client.make(MCP_ECHO, 3)
    envs.reset()
    r = envs.step(
        [
            CallToolAction(tool_name="no_such_tool", arguments={}),
            CallToolAction(tool_name="echo_message", arguments={"wrong": 1}),
            CallToolAction(tool_name="echo_message", arguments={"message": "ok"}),
        ]
    )
    assert r.errors == {}  # OpenEnv reports tool errors in the observation, not as failures
    unknown, bad_args, fine = r.observations
    assert unknown.error.error_type == "tool_not_found" and "no_such_tool" in unknown.error.message
    assert bad_args.error.error_type == "invalid_args" and bad_args.result is None
    assert fine.error is None and fine.result["data"] == "ok"


def test_an_mcp_action_that_fails_its_model_fails_that_env_alone(client: BatchClient) -> None:
    envs = client.make(MCP_ECHO, 2)
    envs.reset()
    r = envs.step(
        [
            {"type": "call_tool", "arguments": {}},  # no tool_name
            CallToolAction(tool_name="echo_message", arguments={"message": "ok"}),
        ]
    )
    error = r.errors[int(envs.env_ids[0])]
    assert isinstance(error, ActionValidationError)
    assert [e["loc"] for e in error.errors] == [["tool_name"]]
    assert r.observations[1].result["data"] == "ok"


def test_a_board_game_with_types_only_in_annotations(client: BatchClient) -> None:
    envs = client.make(TICTACTOE, 2)
    r = envs.reset(seed=5)  # its reset takes no arguments: the seed is dropped, as OpenEnv does
    assert all(type(o) is TicTacToeObservation for o in r.observations)
    assert r.observations[0].legal_actions == list(range(9))
    r = envs.step([TicTacToeAction(position=4), TicTacToeAction(position=42)])
    played, illegal = r.observations
    assert played.board[1][1] == "X" and 4 not in played.legal_actions
    assert illegal.done and illegal.reward == -1.0 and "illegal" in illegal.metadata["error"]
    assert r.terminated.tolist() == [False, True]
    state = envs.state()[0]
    assert type(state) is TicTacToeState and state.moves[0] == 4


def test_an_action_of_another_env_is_refused_with_the_reason(client: BatchClient) -> None:
    envs = client.make(TICTACTOE, 2)
    envs.reset()
    r = envs.step([GridAction(move=Direction.UP), TicTacToeAction(position=0)])
    error = r.errors[int(envs.env_ids[0])]
    assert isinstance(error, ActionValidationError)
    assert {e["type"] for e in error.errors} >= {"missing"}  # position
    assert r.observations[1].board[0][0] == "X"


def test_an_error_the_env_raises_fails_that_env_alone(client: BatchClient) -> None:
    envs = client.make(TICTACTOE, 2)
    envs.reset()
    envs.step([TicTacToeAction(position=42), TicTacToeAction(position=0)])  # env 0's game ends
    r = envs.step([TicTacToeAction(position=1), TicTacToeAction(position=1)])
    assert isinstance(r.errors[int(envs.env_ids[0])], EnvExecutionError)
    assert 0 not in r.errors and r.observations[1] is not None


def test_an_async_env_with_an_enum_action_a_transform_and_a_rubric(client: BatchClient) -> None:
    closed_before = GridWorldEnvironment.close_calls
    envs = client.make(GRID, 2)
    r = envs.reset()
    assert all(type(o) is GridObservation and (o.x, o.y) == (0, 0) for o in r.observations)
    r = envs.step([GridAction(move=Direction.RIGHT), GridAction(move="DOWN")])
    assert [(o.x, o.y) for o in r.observations] == [(1, 0), (0, 1)]
    assert r.rewards.tolist() == [-0.25, -0.25]  # the rubric's 0.0, less the transform's penalty
    assert r.observations[0].metadata["step_penalty"] == 0.25
    for move in ("RIGHT", "DOWN", "DOWN"):
        r = envs.step([GridAction(move=Direction(move))] * 2)
    assert (r.observations[0].x, r.observations[0].y) == (2, 2)
    assert r.rewards[0] == 0.75 and r.terminated[0]
    assert type(envs.state()[0]) is GridState
    envs.close()
    assert GridWorldEnvironment.close_calls == closed_before + 2


def test_an_mcp_env_declaring_no_models_is_typed_as_openenv_serves_it() -> None:
    types = env_types(resolve_env(MCP_ECHO))
    assert types == EnvTypes(CallToolAction, CallToolObservation, McpEchoState)
    assert env_types(resolve_env(TICTACTOE)).action is TicTacToeAction
