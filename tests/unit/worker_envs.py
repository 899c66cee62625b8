"""Small structured envs for the worker's unit tests, reachable as ``f"{__name__}:Class"``."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from echo_env import EchoAction, EchoObservation
from echo_env.server.echo_environment import EchoEnvironment

from openenv_zmq.env import Environment, VectorEnvironment
from openenv_zmq.spaces import Box, Discrete
from openenv_zmq.types import Action, Observation, State


class ValueAction(Action):
    value: int


class ValueObservation(Observation):
    value: int = 0
    payload: Any = None


class FlakyEnv(Environment[ValueAction, ValueObservation, State]):
    """Raises in step on negative values, in reset on seed 13, in close when asked to."""

    closed: ClassVar[list[int]] = []

    def __init__(self, explode: bool = False, fail_close: bool = False, tag: int = 0) -> None:
        super().__init__()
        if explode:
            raise OSError("cannot construct: exploded on purpose")
        self.fail_close = fail_close
        self.tag = tag
        self._state = State()

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> ValueObservation:
        if seed == 13:
            raise KeyError("unlucky seed")
        self._state = State(episode_id=episode_id, step_count=0)
        return ValueObservation(value=0, reward=0.0)

    def step(
        self, action: ValueAction, timeout_s: float | None = None, **kwargs: Any
    ) -> ValueObservation:
        if action.value < 0:
            raise RuntimeError(f"negative value {action.value}")
        self._state.step_count += 1
        payload = object() if action.value == 666 else None  # msgpack cannot carry it
        return ValueObservation(value=action.value, reward=action.value, payload=payload)

    @property
    def state(self) -> State:
        return self._state

    def close(self) -> None:
        FlakyEnv.closed.append(self.tag)
        if self.fail_close:
            raise RuntimeError("close failed")


class SeedObservation(Observation):
    seed: int | None = None


class SeedOnlyEnv(Environment[Action, SeedObservation, State]):
    """Its reset takes only ``seed``: every other reset argument must be dropped."""

    def __init__(self) -> None:
        super().__init__()
        self._state = State()

    def reset(self, seed: int | None = None) -> SeedObservation:  # type: ignore[override]
        return SeedObservation(seed=seed)

    def step(
        self, action: Action, timeout_s: float | None = None, **kwargs: Any
    ) -> SeedObservation:
        return SeedObservation()

    @property
    def state(self) -> State:
        return self._state


class CountdownObservation(Observation):
    left: int


class CountdownEnv(Environment[Action, CountdownObservation, State]):
    """Done after ``horizon`` steps; ``horizon`` can be changed at reset (no ``**kwargs``)."""

    def __init__(self, horizon: int = 2) -> None:
        super().__init__()
        self.horizon = horizon
        self.left = horizon
        self._state = State()

    def reset(  # type: ignore[override]
        self, seed: int | None = None, episode_id: str | None = None, horizon: int | None = None
    ) -> CountdownObservation:
        if horizon is not None:
            self.horizon = horizon
        self.left = self.horizon
        self._state = State(episode_id=episode_id)
        return CountdownObservation(left=self.left, done=self.left <= 0)

    def step(
        self, action: Action, timeout_s: float | None = None, **kwargs: Any
    ) -> CountdownObservation:
        self.left -= 1
        self._state.step_count += 1
        return CountdownObservation(left=self.left, done=self.left <= 0, reward=1.0)

    @property
    def state(self) -> State:
        return self._state


class CounterEnvs(VectorEnvironment):
    """Each instance counts up by its action (0, 1 or 2); the episode ends at ``limit``.

    The observation is ``[count, seed or -1]``; reward is the action; terminated at the limit.
    """

    observation_space = Box(-1, 1_000, (2,), np.float32)
    action_space = Discrete(3)

    def __init__(self, num_envs: int, limit: int = 3, fail_on: int = -1) -> None:
        super().__init__(num_envs)
        self.limit, self.fail_on = limit, fail_on
        self.count = np.zeros(num_envs, np.float32)
        self.seed = np.full(num_envs, -1, np.float32)
        self.closed = False

    def _obs(self, indices: npt.NDArray[np.intp]) -> npt.NDArray[np.float32]:
        return np.stack([self.count[indices], self.seed[indices]], axis=1)

    def reset(self, indices: npt.NDArray[np.intp], seeds: Sequence[int | None]) -> npt.NDArray[Any]:
        self.count[indices] = 0
        self.seed[indices] = [-1 if s is None else s for s in seeds]
        return self._obs(indices)

    def step(
        self, indices: npt.NDArray[np.intp], actions: npt.NDArray[Any]
    ) -> tuple[
        npt.NDArray[Any], npt.NDArray[np.float32], npt.NDArray[np.bool_], npt.NDArray[np.bool_]
    ]:
        if self.fail_on in actions.tolist():
            raise RuntimeError("asked to fail")
        self.count[indices] += actions
        terminated = self.count[indices] >= self.limit
        return (
            self._obs(indices),
            actions.astype(np.float32),
            terminated,
            np.zeros(len(indices), np.bool_),
        )

    def state(self, indices: npt.NDArray[np.intp]) -> list[dict[str, Any]]:
        return [{"episode_id": None, "step_count": int(self.count[i])} for i in indices.tolist()]

    def close(self) -> None:
        self.closed = True


class InflatingEchoEnv(EchoEnvironment):
    """Echo whose message ``"inflate:N"`` comes back as ``N`` bytes: a request far smaller than
    the reply it gets (any other message is echoed as it is)."""

    def step(
        self, action: EchoAction, timeout_s: float | None = None, **kwargs: Any
    ) -> EchoObservation:
        size = action.message.removeprefix(INFLATE)
        if size != action.message:
            action = EchoAction(message="x" * int(size))
        return super().step(action)


INFLATE = "inflate:"


def inflate(size: int) -> dict[str, str]:
    """The action of :class:`InflatingEchoEnv` echoed as ``size`` bytes."""
    return {"message": f"{INFLATE}{size}"}


FLAKY = f"{__name__}:FlakyEnv"
INFLATING = f"{__name__}:InflatingEchoEnv"
SEED_ONLY = f"{__name__}:SeedOnlyEnv"
COUNTDOWN = f"{__name__}:CountdownEnv"
COUNTER = f"{__name__}:CounterEnvs"


class UndeclaredObservation(Observation):
    board: list[str]
    legal: list[int]


class UndeclaredEnv(Environment):  # type: ignore[type-arg]
    """Written as OpenEnv's own envs are: no generic parameters, no annotations."""

    def __init__(self) -> None:
        super().__init__()
        self._state = State()

    def reset(self, seed=None, episode_id=None, **kwargs):
        self._state = State(episode_id=episode_id)
        return UndeclaredObservation(board=["."] * 3, legal=[0, 1, 2])

    def step(self, action, timeout_s=None, **kwargs):
        self._state.step_count += 1
        return UndeclaredObservation(board=["x", ".", "."], legal=[1, 2], reward=1.0)

    @property
    def state(self):
        return self._state


class WaitAction(Action):
    seconds: float = 0.0
    end: bool = False
    """End the episode with this step."""


class WaitObservation(Observation):
    waited: float = 0.0
    instance: int = 0
    """Which instance answered: a fresh one after a timeout has a new number."""


class _Waiter:
    """What the waiting envs share: a count of instances and of calls running at once."""

    made: ClassVar[int] = 0
    running: ClassVar[int] = 0
    most_running: ClassVar[int] = 0
    cancelled: ClassVar[int] = 0
    closed: ClassVar[int] = 0
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        with _Waiter._lock:
            _Waiter.made += 1
            self.instance = _Waiter.made
        self._state = State()

    @classmethod
    def forget(cls) -> None:
        """Start a test from zero."""
        cls.running = cls.most_running = cls.cancelled = cls.closed = 0

    @contextlib.contextmanager
    def counted(self) -> Iterator[None]:
        with _Waiter._lock:
            _Waiter.running += 1
            _Waiter.most_running = max(_Waiter.most_running, _Waiter.running)
        try:
            yield
        finally:
            with _Waiter._lock:
                _Waiter.running -= 1

    def answer(self, action: WaitAction) -> WaitObservation:
        self._state.step_count += 1
        return WaitObservation(
            waited=action.seconds, instance=self.instance, done=action.end, reward=1.0
        )

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> WaitObservation:
        self._state = State(episode_id=episode_id)
        return WaitObservation(instance=self.instance)

    @property
    def state(self) -> State:
        return self._state

    def close(self) -> None:
        with _Waiter._lock:
            _Waiter.closed += 1


class AsyncWaitEnv(_Waiter, Environment[WaitAction, WaitObservation, State]):
    """An agentic env: its step awaits (a tool call, a model) for ``action.seconds``."""

    def step(
        self, action: WaitAction, timeout_s: float | None = None, **kwargs: Any
    ) -> WaitObservation:
        raise AssertionError("the worker must await step_async")

    async def step_async(
        self, action: WaitAction, timeout_s: float | None = None, **kwargs: Any
    ) -> WaitObservation:
        with self.counted():
            try:
                await asyncio.sleep(action.seconds)
            except asyncio.CancelledError:
                with _Waiter._lock:
                    _Waiter.cancelled += 1
                raise
        if action.seconds < 0:
            raise ValueError("cannot wait a negative time")
        return self.answer(action)


class BlockingWaitEnv(_Waiter, Environment[WaitAction, WaitObservation, State]):
    """A sync env that blocks on I/O (a subprocess, HTTP) for ``action.seconds``."""

    def step(self, action: WaitAction, **kwargs: Any) -> WaitObservation:  # type: ignore[override]
        with self.counted():
            time.sleep(action.seconds)
        return self.answer(action)


class ThreadedWaitEnv(BlockingWaitEnv):
    """Says it blocks, so it steps on threads without being asked."""

    STEP_CONCURRENCY = 4


class OwnDeadlineEnv(_Waiter, Environment[WaitAction, WaitObservation, State]):
    """Keeps OpenEnv's ``timeout_s`` itself: stops waiting there and says so in its answer."""

    def step(
        self, action: WaitAction, timeout_s: float | None = None, **kwargs: Any
    ) -> WaitObservation:
        if timeout_s is not None and action.seconds > timeout_s:
            time.sleep(timeout_s)
            obs = self.answer(action)
            obs.metadata = {"timed_out_after": timeout_s}
            return obs
        time.sleep(action.seconds)
        return self.answer(action)


ASYNC_WAIT = f"{__name__}:AsyncWaitEnv"
BLOCKING_WAIT = f"{__name__}:BlockingWaitEnv"
THREADED_WAIT = f"{__name__}:ThreadedWaitEnv"
OWN_DEADLINE = f"{__name__}:OwnDeadlineEnv"
