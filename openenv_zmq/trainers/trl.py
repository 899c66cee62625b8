"""TRL's ``environment_factory``: the class ``GRPOTrainer`` makes one object of per rollout.

TRL calls ``reset(**row)`` at the start of each episode with the dataset row's columns, exposes
every other public method as a tool the model may call, and reward functions read what the
objects recorded (``environments`` argument). A subclass of :class:`TRLEnvironment` writes the
tools; each is a step of the object's pooled session.
"""

from __future__ import annotations

from typing import Any

from openenv_zmq.trainers.held import PooledEnv


class TRLEnvironment(PooledEnv):
    """Base of a TRL ``environment_factory`` class whose episodes run on pooled sessions.

    Set ``pool``, and write each tool as a public method with typed arguments and a docstring
    with an ``Args:`` section (TRL builds the tool's schema from them) that steps the env with
    ``self._step(action)``; ``self.reward`` and ``self.done`` are then the step's. The object
    takes a session at its first reset and keeps it for the trainer's life (TRL reuses its
    objects), so make ``pool`` at least as large as TRL's generation batch. TRL feeds an
    exception a tool raises back to the model as the tool's answer.
    """

    def reset(self, **kwargs: Any) -> str | None:
        """A new episode on this object's session; the dataset row's columns go to the env's
        ``reset``, which keeps those it takes (``seed``, ``episode_id``...). Returns no initial
        text: override it to return some from ``self._reset(**kwargs)``'s observation."""
        self._reset(**kwargs)
        return None
