"""An env object that holds one session of a class-wide pool: what trainer adapters build on.

Trainers make their env objects themselves (TRL with no arguments, SkyRL with its config), so
the pool cannot be passed in: a subclass names it as the class attribute ``pool``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from openenv_zmq.pool.sync import PoolSession, SessionPool
from openenv_zmq.types import StepResult


class PooledEnv:
    """One session of ``pool``, taken at the first :meth:`_reset` or :meth:`_step` (waiting for
    a free one as :meth:`SessionPool.acquire` does) and held until :meth:`_release`.

    ``reward`` and ``done`` are those of the latest reset or step (a ``None`` reward is 0.0).
    Session errors are raised as the session raises them.
    """

    pool: ClassVar[SessionPool]
    """The pool whose sessions this class's objects hold; set it in the subclass."""

    def __init__(self) -> None:
        self.reward = 0.0
        self.done = False
        self._session: PoolSession | None = None

    def _reset(self, **kwargs: Any) -> StepResult[Any]:
        return self._record(self._held().reset(**kwargs))

    def _step(self, action: Any) -> StepResult[Any]:
        return self._record(self._held().step(action))

    def _release(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def _held(self) -> PoolSession:
        if self._session is None:
            self._session = self.pool.acquire()
        return self._session

    def _record(self, result: StepResult[Any]) -> StepResult[Any]:
        self.reward = result.reward or 0.0
        self.done = result.done
        return result
