"""The gateway's frames against the installed OpenEnv's own encoders, with no sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openenv.core.env_server.serialization import (  # type: ignore[import-untyped]
    serialize_observation,
)
from openenv.core.env_server.types import (  # type: ignore[import-untyped]
    WSObservationResponse,
    WSStateResponse,
)

from openenv_zmq.gateway.frames import observation_frame, state_frame
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
