"""The idiom envs: an MCP echo env, tic-tac-toe and a grid world."""
