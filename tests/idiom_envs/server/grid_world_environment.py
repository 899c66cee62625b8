"""A 3x3 grid world with an enum action, a transform, a rubric, and async reset and step.

The agent starts at (0, 0) and reaches the goal at (2, 2); UP and DOWN change y (0 at the top),
LEFT and RIGHT change x, and a move off the grid leaves it in place. The env is async: it overrides
``reset_async`` and ``step_async``, which OpenEnv's server then calls instead of ``reset``/``step``.

Reward: ``GoalRubric`` gives 1.0 on the goal and 0.0 elsewhere, then ``StepPenalty`` (the transform,
passed to ``Environment.__init__``) subtracts 0.25 and records ``metadata["step_penalty"]``: -0.25
per move, 0.75 on reaching the goal, which ends the episode. Reset gives reward 0.0 and goes
through neither. ``close()`` counts its calls in ``GridWorldEnvironment.close_calls``.

Rubrics exist in both openenv-core 0.3 and openenv 0.10 (``openenv.core.rubrics``), so the
rubric is not optional.
"""

import asyncio
from typing import Any, ClassVar
from uuid import uuid4

from openenv.core.env_server.interfaces import (  # type: ignore[import-untyped]
    Environment,
    Transform,
)
from openenv.core.env_server.types import EnvironmentMetadata  # type: ignore[import-untyped]
from openenv.core.rubrics import Rubric  # type: ignore[import-untyped]

from ..models import Direction, GridAction, GridObservation, GridState  # noqa: TID252  # OpenEnv's layout

SIZE = 3
GOAL = (2, 2)
PENALTY = 0.25
MOVES = {
    Direction.UP: (0, -1),
    Direction.DOWN: (0, 1),
    Direction.LEFT: (-1, 0),
    Direction.RIGHT: (1, 0),
}


class GoalRubric(Rubric):  # type: ignore[misc]
    """1.0 when the observation is on the goal, else 0.0."""

    def forward(self, action: Any, observation: Any) -> float:
        return 1.0 if (observation.x, observation.y) == GOAL else 0.0


class StepPenalty(Transform):  # type: ignore[misc]
    """Subtracts ``penalty`` from the reward of every step observation."""

    def __init__(self, penalty: float = PENALTY) -> None:
        self.penalty = penalty

    def __call__(self, observation: Any) -> Any:
        observation.reward = (observation.reward or 0.0) - self.penalty
        observation.metadata["step_penalty"] = self.penalty
        return observation


class GridWorldEnvironment(Environment):  # type: ignore[misc]
    close_calls: ClassVar[int] = 0

    def __init__(self, transform: Transform | None = None, rubric: Rubric | None = None) -> None:
        super().__init__(
            transform=transform if transform is not None else StepPenalty(),
            rubric=rubric if rubric is not None else GoalRubric(),
        )
        self.closed = False
        self._state = GridState(episode_id=str(uuid4()), step_count=0)

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> GridObservation:
        self._reset_rubric()
        return self._start(episode_id)

    def step(
        self, action: GridAction, timeout_s: float | None = None, **kwargs: Any
    ) -> GridObservation:
        observation = self._move(action)
        observation.reward = self._apply_rubric(action, observation)
        transformed: GridObservation = self._apply_transform(observation)
        return transformed

    async def reset_async(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> GridObservation:
        await asyncio.sleep(0)
        await self._reset_rubric_async()
        return self._start(episode_id)

    async def step_async(
        self, action: GridAction, timeout_s: float | None = None, **kwargs: Any
    ) -> GridObservation:
        await asyncio.sleep(0)
        observation = self._move(action)
        observation.reward = await self._apply_rubric_async(action, observation)
        transformed: GridObservation = self._apply_transform(observation)
        return transformed

    @property
    def state(self) -> GridState:
        return self._state

    def get_metadata(self) -> EnvironmentMetadata:
        return EnvironmentMetadata(
            name="grid_world",
            description="A 3x3 grid world: walk from (0, 0) to (2, 2).",
            version="0.1.0",
            author="openenv-zmq tests",
        )

    def close(self) -> None:
        type(self).close_calls += 1
        self.closed = True

    def _start(self, episode_id: str | None) -> GridObservation:
        self._state = GridState(episode_id=episode_id or str(uuid4()), step_count=0, x=0, y=0)
        return GridObservation(x=0, y=0, message="Reach (2, 2).", reward=0.0, done=False)

    def _move(self, action: GridAction) -> GridObservation:
        dx, dy = MOVES[action.move]
        x, y = self._state.x + dx, self._state.y + dy
        message = "moved"
        if not (0 <= x < SIZE and 0 <= y < SIZE):
            x, y, message = self._state.x, self._state.y, "bumped into a wall"
        self._state.x, self._state.y = x, y
        self._state.step_count += 1
        done = (x, y) == GOAL
        return GridObservation(x=x, y=y, message="goal reached" if done else message, done=done)
