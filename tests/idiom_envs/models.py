"""Models of the idiom envs: plain subclasses of OpenEnv's Action, Observation and State."""

from enum import Enum

from openenv.core.env_server.types import (  # type: ignore[import-untyped]
    Action,
    Observation,
    State,
)
from pydantic import Field

# openenv ships no type information, so every subclass below subclasses Any (hence misc).


class McpEchoState(State):  # type: ignore[misc]
    """State of the MCP echo env: how many times it was reset, besides the base fields."""

    reset_count: int = 0


class TicTacToeAction(Action):  # type: ignore[misc]
    """Put an X on a cell, numbered 0-8 row by row. Range and occupancy are checked by step."""

    position: int = Field(..., description="Cell to mark, 0-8 row by row")


class TicTacToeObservation(Observation):  # type: ignore[misc]
    """The board as three rows of "X", "O" or " ", the free cells, and the winner once known."""

    board: list[list[str]] = Field(default_factory=list)
    legal_actions: list[int] = Field(default_factory=list)
    winner: str | None = Field(default=None, description='"X", "O", "draw" or None')


class TicTacToeState(State):  # type: ignore[misc]
    """State with the board and the moves played so far (X and O alternating)."""

    board: list[list[str]] = Field(default_factory=list)
    moves: list[int] = Field(default_factory=list)


class Direction(str, Enum):  # noqa: UP042  # OpenEnv's envs use (str, Enum)
    UP = "UP"
    DOWN = "DOWN"
    LEFT = "LEFT"
    RIGHT = "RIGHT"


class GridAction(Action):  # type: ignore[misc]
    move: Direction = Field(..., description="Direction to move")


class GridObservation(Observation):  # type: ignore[misc]
    x: int = Field(..., description="Column, 0 at the left")
    y: int = Field(..., description="Row, 0 at the top")
    message: str = ""


class GridState(State):  # type: ignore[misc]
    x: int = 0
    y: int = 0
