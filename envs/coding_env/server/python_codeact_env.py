"""OpenEnv's coding env: each episode's code runs in a session of this process's session host.

The session (:mod:`openenv_zmq.sandbox.host`) is a contained process unless the operator chose
``--unsafe-in-process-code``; this env cannot choose. Its handler is
:class:`~coding_env.server.executor.PyExecutor`, so the interpreter's variables, imports and
``def``\\ s live in the session and last until ``reset()`` replaces it.

Beyond OpenEnv's semantics (OPENENV_PROTOCOL.md, "coding"):

- A step has a real deadline (``timeout_s``): code still running then is killed with its session
  and the step answers ``ExecutionTimeoutError`` (exit code 1, ``metadata["session_restarted"]``).
- A session whose process dies makes the step raise
  :class:`~openenv_zmq.errors.SessionCrashed` (a per-env error row).
- Code longer than :data:`MAX_CODE_CHARS` is refused with ``ValueError`` before it reaches the
  session, which stays as it was.

After a timeout or a crash the episode goes on (same ``episode_id``, ``step_count``) in a fresh
session, opened by the next step: the episode's variables, imports and ``def``\\ s are gone.
"""

from __future__ import annotations

import math
import uuid
from typing import Any, ClassVar

from coding_env.models import CodeAction, CodeObservation, CodeState
from coding_env.server.transforms import create_safe_coding_transform
from openenv_zmq.env import Environment
from openenv_zmq.errors import SessionCrashed
from openenv_zmq.sandbox.host import session_host
from openenv_zmq.sandbox.sessions import Reply, Session, SessionTimedOut

SESSION_FACTORY = "coding_env.server.executor:PyExecutor"
"""The handler each session runs."""
MAX_CODE_CHARS = 100_000
"""The longest code a step takes (the reward's syntax check parses it in the worker)."""
DEFAULT_TIMEOUT_S = 30.0
"""A step's deadline when neither the env nor the step names one (OpenEnv's 30 seconds)."""


class PythonCodeActEnv(Environment[CodeAction, CodeObservation, CodeState]):
    """Runs each step's code in the episode's session; ``state.last_exit_code`` is the last
    step's exit code. Episodes never end on their own (``done`` is always false).

    ``timeout_s`` is every step's deadline unless the step names its own. ``reset`` / ``step``
    block on the session; the worker awaits ``reset_async`` / ``step_async``, which do not.
    """

    SUPPORTS_CONCURRENT_SESSIONS = True
    SESSION_FACTORY: ClassVar[str] = SESSION_FACTORY
    """Tells the worker to start its sandbox, with this handler's modules loaded, at start."""

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number of seconds, not {timeout_s!r}")
        super().__init__(transform=create_safe_coding_transform())
        self.timeout_s = timeout_s
        self._session: Session | None = None
        self._state = CodeState()

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> CodeObservation:
        """A new episode in a fresh session; ``seed`` and other arguments are ignored."""
        self._close_session()
        self._session = session_host().open(SESSION_FACTORY)
        return self._start_episode(episode_id)

    async def reset_async(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> CodeObservation:
        self._close_session()
        self._session = await session_host().open_async(SESSION_FACTORY)
        return self._start_episode(episode_id)

    def step(
        self, action: CodeAction, timeout_s: float | None = None, **kwargs: Any
    ) -> CodeObservation:
        """Run ``action.code``. Raises ``ValueError`` for code over :data:`MAX_CODE_CHARS` and
        :class:`SessionCrashed` when the session's process died."""
        request = _request(action)
        deadline = self.timeout_s if timeout_s is None else timeout_s
        if self._session is None:
            self._session = session_host().open(SESSION_FACTORY)
        try:
            reply = self._session.call(request, deadline)
        except (SessionTimedOut, SessionCrashed) as exc:
            return self._session_lost(action.code, deadline, exc)
        return self._observe(action.code, reply)

    async def step_async(
        self, action: CodeAction, timeout_s: float | None = None, **kwargs: Any
    ) -> CodeObservation:
        request = _request(action)
        deadline = self.timeout_s if timeout_s is None else timeout_s
        if self._session is None:
            self._session = await session_host().open_async(SESSION_FACTORY)
        try:
            reply = await self._session.call_async(request, deadline)
        except (SessionTimedOut, SessionCrashed) as exc:
            return self._session_lost(action.code, deadline, exc)
        return self._observe(action.code, reply)

    @property
    def state(self) -> CodeState:
        return self._state

    def close(self) -> None:
        """End the session; a later ``reset`` or ``step`` opens another."""
        self._close_session()

    def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def _start_episode(self, episode_id: str | None) -> CodeObservation:
        self._state = CodeState(episode_id=episode_id or str(uuid.uuid4()), step_count=0)
        return self._transformed(CodeObservation())

    def _observe(self, code: str, reply: Reply, restarted: bool = False) -> CodeObservation:
        """The step's observation from the session's reply, with its reward; counts the step."""
        metadata: dict[str, Any] = {"last_code": code}
        if restarted:
            metadata["session_restarted"] = True
        observation = CodeObservation(
            stdout=reply["stdout"],
            stderr=reply["stderr"],
            exit_code=reply["exit_code"],
            metadata=metadata,
        )
        self._state.step_count += 1
        self._state.last_exit_code = observation.exit_code
        return self._transformed(observation)

    def _transformed(self, observation: CodeObservation) -> CodeObservation:
        """``self.transform`` applied, as OpenEnv's ``_apply_transform`` does (if one is set)."""
        if self.transform is None:
            return observation
        transformed: CodeObservation = self.transform(observation)
        return transformed

    def _session_lost(
        self, code: str, deadline: float, lost: SessionTimedOut | SessionCrashed
    ) -> CodeObservation:
        """The host closed the session: forget it, so the next step opens another. A timeout is
        the step's observation; a crash is re-raised and the step does not count."""
        self._close_session()
        if isinstance(lost, SessionCrashed):
            raise lost
        timed_out = {"stdout": "", "stderr": _timeout_message(deadline), "exit_code": 1}
        return self._observe(code, timed_out, restarted=True)


def _request(action: CodeAction) -> dict[str, Any]:
    if len(action.code) > MAX_CODE_CHARS:
        raise ValueError(
            f"the code is {len(action.code):,} characters long; "
            f"the coding env runs at most {MAX_CODE_CHARS:,}"
        )
    return {"code": action.code}


def _timeout_message(deadline: float) -> str:
    """smolagents' wording, with its number (``30``, not ``30.0``)."""
    seconds = int(deadline) if float(deadline).is_integer() else deadline
    return (
        "ExecutionTimeoutError: Code execution exceeded the maximum execution time of "
        f"{seconds} seconds"
    )
