"""Client for an echo env server (OpenEnv's or our gateway), as OpenEnv's seed ``EchoEnv``.

It speaks WebSocket through ``websockets``, which the ``gateway`` extra installs."""

from __future__ import annotations

from typing import Any

from echo_env.models import EchoAction, EchoObservation
from openenv_zmq.client.envclient import EnvClient
from openenv_zmq.types import State, StepResult


class EchoEnv(EnvClient[EchoAction, EchoObservation, State]):
    """One echo session: ``async with EchoEnv(base_url="http://host:8000") as env: ...``."""

    def _step_payload(self, action: EchoAction) -> dict[str, Any]:
        return {"message": action.message}

    def _parse_result(self, payload: dict[str, Any]) -> StepResult[EchoObservation]:
        fields = payload.get("observation", {})
        observation = EchoObservation(
            echoed_message=fields.get("echoed_message", ""),
            message_length=fields.get("message_length", 0),
            done=payload.get("done", False),
            reward=payload.get("reward"),
            metadata=fields.get("metadata", {}),
        )
        return StepResult(
            observation=observation, reward=payload.get("reward"), done=payload.get("done", False)
        )

    def _parse_state(self, payload: dict[str, Any]) -> State:
        return State.model_validate(payload)
