"""Gymnasium's three autoreset modes, as an explicit enum (``make(..., autoreset=...)``).

- ``disabled`` (default, OpenEnv's behaviour): an env whose episode ended steps on until you
  ``reset()`` it; the ending step returns the final observation.
- ``next_step``: the ending step returns the final observation; the *next* step of that env
  resets it instead of stepping: reset observation, reward 0, terminated and truncated false.
- ``same_step``: the ending step resets the env at once and returns the reset observation, with
  terminated/truncated and the reward of the ending step; the final observation is in
  ``BatchResult.final_observations`` at that row.
"""

from __future__ import annotations

from enum import StrEnum


class AutoresetMode(StrEnum):
    DISABLED = "disabled"
    NEXT_STEP = "next_step"
    SAME_STEP = "same_step"

    @classmethod
    def _missing_(cls, value: object) -> AutoresetMode:
        modes = ", ".join(repr(mode.value) for mode in cls)
        raise ValueError(f"autoreset must be one of {modes}; got {value!r}")
