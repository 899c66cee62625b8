"""The gateway's frames and JSON-RPC requests against the installed OpenEnv's own models."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openenv.core.env_server.mcp_types import (  # type: ignore[import-untyped]
    JsonRpcRequest as OpenEnvJsonRpcRequest,
)
from openenv.core.env_server.serialization import (  # type: ignore[import-untyped]
    serialize_observation,
)
from openenv.core.env_server.types import (  # type: ignore[import-untyped]
    WSObservationResponse,
    WSStateResponse,
)
from pydantic import ValidationError

from openenv_zmq.gateway.frames import observation_frame, state_frame
from openenv_zmq.gateway.jsonrpc import JsonRpcRequest, parse_request
from tests.idiom_envs.models import TicTacToeObservation, TicTacToeState
from tests.openenv_compat.installed import SENDS_METADATA


def without_metadata(frame: dict[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in frame["data"].items() if k != "metadata"}
    data["observation"] = {k: v for k, v in data["observation"].items() if k != "metadata"}
    return {**frame, "data": data}


@pytest.mark.parametrize("metadata", [{}, {"error": "illegal move: 42"}])
def test_observation_frames_are_openenv_0_10_s(metadata: dict[str, str]) -> None:
    obs = TicTacToeObservation(board=[["X"]], legal_actions=[1], reward=-1.0, metadata=metadata)
    openenv_frame = WSObservationResponse(data=serialize_observation(obs)).model_dump_json()
    if SENDS_METADATA:
        assert observation_frame(obs) == openenv_frame
    else:  # openenv-core 0.3 sends the rest exactly so, and its clients ignore metadata
        assert without_metadata(json.loads(observation_frame(obs))) == json.loads(openenv_frame)


def test_state_frames_are_openenv_s() -> None:
    state = TicTacToeState(episode_id="e", step_count=1, board=[["X"]], moves=[4])
    assert state_frame(state) == WSStateResponse(data=state.model_dump()).model_dump_json()


@pytest.mark.parametrize(
    "raw",
    [
        {"jsonrpc": "2.0", "method": "tools/list", "id": 1},
        {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "x"}, "id": "a"},
        {"jsonrpc": "2.0", "method": "m", "id": 1.0},
        {"jsonrpc": "2.0", "method": "m", "id": True},
        {"jsonrpc": "2.0", "method": "m", "id": None},
        {"method": "tools/list"},
        {"jsonrpc": "1.0", "method": "m"},
        {"jsonrpc": "2.0", "method": 5},
        {"jsonrpc": "2.0", "method": "m", "params": [1]},
        {"jsonrpc": "2.0", "method": "m", "params": None},
        {"jsonrpc": "2.0", "method": "m", "id": 7, "extra": 1},
        {"jsonrpc": "2.0", "method": "m", "id": [7]},
    ],
)
def test_json_rpc_requests_are_what_openenv_accepts(raw: dict[str, Any]) -> None:
    ours = parse_request(raw)
    try:
        theirs = OpenEnvJsonRpcRequest(**raw)
    except ValidationError:
        assert not isinstance(ours, JsonRpcRequest)
    else:
        assert isinstance(ours, JsonRpcRequest)
        assert ours.model_dump() == theirs.model_dump()
