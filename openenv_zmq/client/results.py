"""What a batched call returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from openenv_zmq.errors import EnvError


@dataclass(frozen=True)
class BatchResult:
    """One answer per env id, in the order the env ids were asked for.

    ``observations`` is one array (rows of zeros where an env failed) for an array env, else a
    list of the env's Observation models (dicts with every field when this process cannot import
    the env, or the env declares no observation type; see ``client.state.local_models``) with
    ``None`` where an env failed. A failed env has its error in ``errors[env_id]`` and
    ``dones[i]`` set; the rest of the batch is unaffected. ``final_observations`` is set in
    ``same_step`` autoreset mode when an episode ended in this step: the last observation of
    each such episode at its row (other rows hold ``None`` or zeros); otherwise it is ``None``.
    """

    env_ids: npt.NDArray[np.int64]
    observations: Any
    rewards: npt.NDArray[np.float32]
    terminated: npt.NDArray[np.bool_]
    truncated: npt.NDArray[np.bool_]
    errors: dict[int, EnvError] = field(default_factory=dict)
    final_observations: Any = None

    @property
    def dones(self) -> npt.NDArray[np.bool_]:
        """``terminated | truncated``, and true for every env that failed."""
        done = self.terminated | self.truncated
        if self.errors:
            done = done | np.isin(self.env_ids, np.fromiter(self.errors, dtype=np.int64))
        return done

    def __len__(self) -> int:
        return len(self.env_ids)

    def __repr__(self) -> str:
        # The dataclass repr prints every observation: thousands of rows for one batch.
        kind = (
            f"{self.observations.dtype}{list(self.observations.shape)}"
            if isinstance(self.observations, np.ndarray)
            else f"{len(self.observations)} rows"
        )
        ended = int(np.count_nonzero(self.terminated | self.truncated))
        return (
            f"<BatchResult of {len(self)} envs: observations {kind}, {ended} ended,"
            f" {len(self.errors)} failed>"
        )

    def raise_for_errors(self) -> None:
        """Raise the first env's error (lowest env id), if any env failed."""
        if self.errors:
            raise self.errors[min(self.errors)]
