"""Resets and steps that run off the worker's thread, one :class:`Call` per env.

An env whose ``step_async`` (or ``reset_async``) is its own is awaited on the worker's event
loop, together with the rest of its batch; a sync env that blocks on I/O (``STEP_CONCURRENCY``,
or ``make(..., concurrency=N)``) or whose call has a deadline runs on a thread. A call only
calls the env and keeps what came back: the slot it belongs to is updated later, on the worker's
thread, by :meth:`~openenv_zmq.worker.slots.Deferred.settle`. Running the calls is
:mod:`openenv_zmq.worker.runner`'s job.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openenv_zmq.worker.kinds import Slot


class Mode(enum.Enum):
    ASYNC = "async"
    """Awaited on the worker's event loop."""
    THREAD = "thread"
    """Run on one of the worker's threads."""


def grace(timeout_s: float) -> float:
    """How much longer than ``timeout_s`` the worker waits for an env that was given
    ``timeout_s`` itself: long enough for the env to answer its own deadline with its own
    observation (the coding env kills its process and reports it)."""
    return min(1.0, max(0.05, 0.1 * timeout_s))


@dataclass(slots=True, eq=False)
class Call:
    """One env's reset (``action is None``) or step, and what it returned once it has run."""

    row: int
    env_id: int
    slot: Slot
    mode: Mode
    action: Any
    kwargs: dict[str, Any]
    """Keyword arguments of the call: reset's, or step's ``timeout_s``."""
    deadline_s: float | None
    """The call's deadline; ``None``: it may take as long as it takes."""
    grace_s: float = 0.0
    """How much past its deadline the worker still waits (for an env keeping the deadline)."""
    no_reward: bool = False
    """A reset standing in for a step (Gymnasium's ``next_step`` autoreset) earns nothing."""
    then_reset: dict[str, Any] | None = None
    """Same-step autoreset: the reset's keyword arguments, if the step ends the episode."""
    outcome: Any = None
    """The observation returned, or the exception raised."""
    reset_outcome: Any = None
    """The same-step autoreset's observation or exception, when there was one."""
    timed_out: bool = False

    def run(self) -> None:
        """Call the env here (on a thread), keeping what it returned or raised."""
        env = self.slot.env
        try:
            if self.action is None:
                self.outcome = env.reset(**self.kwargs)
                return
            self.outcome = env.step(self.action, **self.kwargs)
        except Exception as exc:
            self.outcome = exc
            return
        if self.then_reset is not None and getattr(self.outcome, "done", False):
            try:
                self.reset_outcome = env.reset(**self.then_reset)
            except Exception as exc:
                self.reset_outcome = exc

    async def run_async(self) -> None:
        """Await the env's own ``reset_async`` / ``step_async``; a cancellation propagates."""
        env = self.slot.env
        try:
            if self.action is None:
                self.outcome = await env.reset_async(**self.kwargs)
                return
            self.outcome = await env.step_async(self.action, **self.kwargs)
        except Exception as exc:
            self.outcome = exc
            return
        if self.then_reset is not None and getattr(self.outcome, "done", False):
            try:
                if self.slot.kind.async_reset:
                    self.reset_outcome = await env.reset_async(**self.then_reset)
                else:
                    self.reset_outcome = env.reset(**self.then_reset)
            except Exception as exc:
                self.reset_outcome = exc

    @property
    def wait_s(self) -> float | None:
        """How long the worker waits for the call."""
        return None if self.deadline_s is None else self.deadline_s + self.grace_s

    def timeout_message(self) -> str:
        what = "reset" if self.action is None else "step"
        return (
            f"the {what} did not return within its deadline of {self.deadline_s:.3g} s; "
            "the instance was discarded and reset() builds a new one"
        )
