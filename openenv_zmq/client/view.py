"""What the sync and asyncio env groups share: reading a group needs no I/O."""

from __future__ import annotations

import numpy as np

from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.client.state import GroupState
from openenv_zmq.spaces import Space


class GroupView:
    """Read-only facts about an env group."""

    def __init__(self, state: GroupState) -> None:
        self._state = state

    @property
    def env_ids(self) -> np.ndarray:
        """The group's env ids, ascending (a copy)."""
        return self._state.env_ids.copy()

    @property
    def env(self) -> str:
        """The env name the group was made with."""
        return self._state.env

    @property
    def observation_space(self) -> Space | None:
        """One env's observation space, for an array env (``None`` for a structured one)."""
        return self._state.observation_space

    @property
    def action_space(self) -> Space | None:
        """One env's action space, for an array env (``None`` for a structured one)."""
        return self._state.action_space

    @property
    def autoreset(self) -> AutoresetMode:
        """The autoreset mode the group was made with."""
        return self._state.spec.autoreset

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called: the group's envs are gone from their workers."""
        return self._state.closed

    def __len__(self) -> int:
        return len(self._state.env_ids)

    def __repr__(self) -> str:
        ids = self._state.env_ids
        span = f"env ids {ids[0]}..{ids[-1]}" if len(ids) else "no env ids"
        state = "closed" if self.closed else self._state.spec.autoreset.value
        return f"<{type(self).__name__} {self.env!r} x{len(ids)}, {span}, {state}>"
