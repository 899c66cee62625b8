"""Client for a coding env server (OpenEnv's or our gateway), as OpenEnv's ``CodingEnv``.

It speaks WebSocket through ``websockets``, which the ``gateway`` extra installs."""

from __future__ import annotations

from typing import Any

from coding_env.models import CodeAction, CodeObservation, CodeState
from openenv_zmq.client.envclient import EnvClient
from openenv_zmq.types import StepResult


class CodingEnv(EnvClient[CodeAction, CodeObservation, CodeState]):
    """One coding session: ``async with CodingEnv(base_url="http://host:8000") as env: ...``."""

    def _step_payload(self, action: CodeAction) -> dict[str, Any]:
        return {"code": action.code}

    def _parse_result(self, payload: dict[str, Any]) -> StepResult[CodeObservation]:
        fields = payload.get("observation", {})
        observation = CodeObservation(
            stdout=fields.get("stdout", ""),
            stderr=fields.get("stderr", ""),
            exit_code=fields.get("exit_code", 0),
            done=payload.get("done", False),
            reward=payload.get("reward"),
            metadata=fields.get("metadata", {}),
        )
        return StepResult(
            observation=observation, reward=payload.get("reward"), done=payload.get("done", False)
        )

    def _parse_state(self, payload: dict[str, Any]) -> CodeState:
        return CodeState(
            episode_id=payload.get("episode_id"),
            step_count=payload.get("step_count", 0),
            last_exit_code=payload.get("last_exit_code", 0),
        )
