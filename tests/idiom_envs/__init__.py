"""Test envs written the way OpenEnv's own envs are, to check that they run here unchanged.

Laid out like an OpenEnv env package: models in ``models.py``, one env per module under
``server/``, each importing its models relatively. The code imports only names that exist in both
openenv-core 0.3 and openenv 0.10, so one copy serves both.
"""

MCP_ECHO = "tests.idiom_envs.server.mcp_echo_environment:McpEchoEnvironment"
TICTACTOE = "tests.idiom_envs.server.tictactoe_environment:TicTacToeEnvironment"
GRID = "tests.idiom_envs.server.grid_world_environment:GridWorldEnvironment"
"""The envs by the names workers are given (``module:Class``)."""
