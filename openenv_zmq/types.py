"""OpenEnv's typed messages: field names, defaults and model config exactly as in openenv-core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field


class Action(BaseModel):
    """Base of every env action. Unknown fields are refused, as in OpenEnv."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, arbitrary_types_allowed=True
    )

    metadata: dict[str, Any] = Field(default_factory=dict)


class Observation(BaseModel):
    """Base of every env observation; ``done`` and ``reward`` ride along as in OpenEnv."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, arbitrary_types_allowed=True
    )

    done: bool = False
    reward: bool | int | float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class State(BaseModel):
    """Env state. Extra fields are allowed so envs can add their own."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, arbitrary_types_allowed=True)

    episode_id: str | None = None
    step_count: int = Field(default=0, ge=0)


ObsT = TypeVar("ObsT")


@dataclass
class StepResult(Generic[ObsT]):
    """One env's answer to reset/step, as OpenEnv's client returns it."""

    observation: ObsT
    reward: float | None = None
    done: bool = False

    @classmethod
    def of(cls, observation: ObsT) -> StepResult[ObsT]:
        """The result whose reward and done are the observation's own (an Observation model,
        or its fields as a dict), as OpenEnv's server splits them out and its client reads them."""
        if isinstance(observation, dict):
            reward, done = observation.get("reward"), observation.get("done", False)
        else:
            reward, done = getattr(observation, "reward", None), getattr(observation, "done", False)
        return cls(observation, None if reward is None else float(reward), bool(done))
