"""An MCP-only echo env, written as OpenEnv's own echo env is at HEAD.

Tools, served by a FastMCP server the env wraps: ``echo_message(message)`` returns the message,
``echo_with_length(message)`` returns ``{"message": message, "length": len(message)}``.
``ListToolsAction`` and ``CallToolAction`` are routed by ``MCPEnvironment.step`` / ``step_async``;
any other action reaches ``_step_impl``, which answers with an error in the observation's
metadata. Every step, MCP or not, adds one to ``step_count``.
"""

from typing import Any
from uuid import uuid4

from fastmcp import FastMCP
from openenv.core.env_server.mcp_environment import (  # type: ignore[import-untyped]
    MCPEnvironment,
)
from openenv.core.env_server.types import (  # type: ignore[import-untyped]
    Action,
    Observation,
)

from ..models import McpEchoState  # noqa: TID252  # OpenEnv's layout


class McpEchoEnvironment(MCPEnvironment):  # type: ignore[misc]
    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self) -> None:
        mcp = FastMCP("echo_env")

        @mcp.tool
        def echo_message(message: str) -> str:
            """Echo back the provided message."""
            return message

        @mcp.tool
        def echo_with_length(message: str) -> dict[str, Any]:
            """Echo back the message with its length."""
            return {"message": message, "length": len(message)}

        super().__init__(mcp)
        self._state = McpEchoState(episode_id=str(uuid4()), step_count=0)

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> Observation:
        self._state = McpEchoState(
            episode_id=episode_id or str(uuid4()),
            step_count=0,
            reset_count=self._state.reset_count + 1,
        )
        return Observation(
            done=False,
            reward=0.0,
            metadata={"status": "ready", "message": "Echo environment ready!"},
        )

    def _step_impl(self, action: Action, timeout_s: float | None = None, **kwargs: Any) -> Any:
        return Observation(
            done=False,
            reward=0.0,
            metadata={
                "error": f"Unknown action type: {type(action).__name__}. "
                "Use ListToolsAction or CallToolAction for MCP interactions."
            },
        )

    def step(self, action: Action, timeout_s: float | None = None, **kwargs: Any) -> Any:
        self._state.step_count += 1
        return super().step(action, timeout_s=timeout_s, **kwargs)

    async def step_async(
        self, action: Action, timeout_s: float | None = None, **kwargs: Any
    ) -> Any:
        self._state.step_count += 1
        return await super().step_async(action, timeout_s=timeout_s, **kwargs)

    @property
    def state(self) -> McpEchoState:
        return self._state
