"""``PythonCodeActEnv`` behaves as OpenEnv's (its reset and reward tests, ported) and keeps its
deadline, size cap and sessions as documented.

Most tests run on the in-process session host (``code_host``), so they need no processes
(tests/integration/test_coding_contained.py runs them again on the contained host);
the timeout and crash tests use :class:`LosingHost`, which reports those outcomes as a contained
host does.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from coding_env import CodeAction, CodeObservation, CodeState
from coding_env.server import PythonCodeActEnv
from coding_env.server import python_codeact_env as module
from coding_env.server.executor import PyExecutor

from openenv_zmq.errors import SessionCrashed
from openenv_zmq.registry import env_types
from openenv_zmq.sandbox import host
from openenv_zmq.sandbox.sessions import Reply, Request, Session, SessionHost, SessionTimedOut
from openenv_zmq.worker.kinds import EnvKind

LONG = "x = " + " + ".join(str(i) for i in range(50))
"""Safe code over the 100 characters of the concision bonus."""


@pytest.fixture
def code_host() -> Iterator[None]:
    host.configure(host.InProcessHost)
    yield
    host.shutdown()
    host.reset_configuration()


@pytest.fixture
def env(code_host: None) -> Iterator[PythonCodeActEnv]:
    environment = PythonCodeActEnv()
    environment.reset()
    yield environment
    environment.close()


@pytest.fixture
def env_with_variable(env: PythonCodeActEnv) -> PythonCodeActEnv:
    env.step(CodeAction(code="test_var = 42"))
    return env


def step(env: PythonCodeActEnv, code: str) -> CodeObservation:
    return env.step(CodeAction(code=code))


# OpenEnv's test_python_codeact_reset.py


def test_reset_clears_defs(env: PythonCodeActEnv) -> None:
    assert step(env, "def my_function():\n    return 'Hello from function'\n").exit_code == 0
    obs = step(env, "result = my_function()\nprint(result)")
    assert (obs.exit_code, obs.stdout) == (0, "Hello from function\n")
    reset = env.reset()
    assert reset.exit_code == 0
    assert env.state.step_count == 0
    obs = step(env, "result = my_function()\nprint(result)")
    assert obs.exit_code == 1
    assert "my_function" in obs.stderr


def test_reset_clears_variables(env: PythonCodeActEnv) -> None:
    assert step(env, "my_variable = 42\n").exit_code == 0
    assert step(env, "print(my_variable)").stdout == "42\n"
    env.reset()
    obs = step(env, "print(my_variable)")
    assert obs.exit_code == 1
    assert "The variable `my_variable` is not defined" in obs.stderr


def test_reset_clears_imports(env: PythonCodeActEnv) -> None:
    assert step(env, "import math as m\n").exit_code == 0
    assert step(env, "print(m.pi)").stdout.startswith("3.14")
    env.reset()
    obs = step(env, "print(m.pi)")
    assert obs.exit_code == 1
    assert "The variable `m` is not defined" in obs.stderr


def test_step_count_counts_steps_and_reset_clears_it(env: PythonCodeActEnv) -> None:
    assert env.state.step_count == 0
    for i in range(5):
        step(env, f"print({i})")
    assert env.state.step_count == 5
    env.reset()
    assert env.state.step_count == 0
    step(env, "print('test')")
    assert env.state.step_count == 1


def test_reset_changes_the_episode_id(env: PythonCodeActEnv) -> None:
    first = env.state.episode_id
    step(env, "print('test')")
    env.reset()
    assert env.state.episode_id != first


# OpenEnv's test_python_codeact_rewards.py


@pytest.mark.parametrize(
    ("code", "reward", "exit_code"),
    [
        ("x = 5", 0.1, 0),
        ("print('Hello')", 0.1, 0),
        ("y = 10 + 5", 0.1, 0),
        (LONG, 0.0, 0),
        ("import os", -0.9, 1),
        ("eval('1+1')", -0.9, 1),
        ("exec('x=1')", -0.9, 1),
        ("with open('f.txt') as f: pass", -0.9, 1),
        ("import os\n" + "x = 1\n" * 50, -1.0, 1),
        ("print('unclosed", -0.1, 1),
        (LONG + "\nprint('unclosed", -0.2, 1),
    ],
)
def test_reward(env: PythonCodeActEnv, code: str, reward: float, exit_code: int) -> None:
    obs = step(env, code)
    assert obs.reward == pytest.approx(reward, rel=1e-9)
    assert obs.exit_code == exit_code


def test_metadata_holds_the_code(env: PythonCodeActEnv) -> None:
    assert step(env, "print('Hello, World!')").metadata == {"last_code": "print('Hello, World!')"}


@pytest.mark.parametrize(
    ("code", "violation"),
    [
        ("import os", r"import\s+os"),
        ("eval('1+1')", r"eval\("),
        ("open('file.txt')", r"open\("),
        ("print('safe')", None),
        ("x = 1 + 2", None),
    ],
)
def test_metadata_names_a_safety_violation(
    env: PythonCodeActEnv, code: str, violation: str | None
) -> None:
    expected: dict[str, Any] = {"last_code": code}
    if violation is not None:
        expected["safety_violation"] = violation
    assert step(env, code).metadata == expected


def test_safe_code_gets_a_reward(env: PythonCodeActEnv) -> None:
    obs = step(env, "print('Hello')")
    assert obs.reward is not None
    assert obs.exit_code == 0


def test_rewards_are_the_same_on_every_step(env: PythonCodeActEnv) -> None:
    for i in range(5):
        assert step(env, f"x = {i}").reward == pytest.approx(0.1, rel=1e-9)


def test_rewards_go_on_after_reset(env: PythonCodeActEnv) -> None:
    assert step(env, "x = 1").reward == pytest.approx(0.1, rel=1e-9)
    env.reset()
    assert step(env, "y = 2").reward == pytest.approx(0.1, rel=1e-9)


@pytest.mark.parametrize(
    ("code", "stdout"),
    [("print(test_var)", "42\n"), ("print(test_var * 2)", "84\n"), ("print(test_var + 8)", "50\n")],
)
def test_a_variable_of_an_earlier_step(
    env_with_variable: PythonCodeActEnv, code: str, stdout: str
) -> None:
    obs = step(env_with_variable, code)
    assert (obs.exit_code, obs.stdout) == (0, stdout)
    assert obs.reward == pytest.approx(0.1, rel=1e-9)


@pytest.mark.parametrize(
    "code",
    ["import os", "import subprocess", "eval('x')", "exec('x=1')", "__import__('os')", "open('f')"],
)
def test_every_dangerous_pattern_is_penalised(env: PythonCodeActEnv, code: str) -> None:
    obs = step(env, code)
    assert obs.reward == pytest.approx(-0.9, rel=1e-9)
    assert "safety_violation" in obs.metadata


def test_one_dangerous_line_among_safe_ones_is_enough(env: PythonCodeActEnv) -> None:
    obs = step(env, "\nx = 5\ny = 10\nimport os\nz = x + y\n")
    assert obs.reward == pytest.approx(-1.0 + 0.1)
    assert obs.metadata["safety_violation"] == r"import\s+os"


# Beyond OpenEnv's tests: the semantics of OPENENV_PROTOCOL.md


def test_reset_observation(code_host: None) -> None:
    obs = PythonCodeActEnv().reset()
    assert obs == CodeObservation(stdout="", stderr="", exit_code=0, reward=0.0, done=False)


def test_reset_keeps_a_given_episode_id_and_ignores_other_arguments(env: PythonCodeActEnv) -> None:
    env.reset(seed=3, episode_id="episode-7", difficulty="hard")
    step(env, "x = 1")
    assert env.state == CodeState(episode_id="episode-7", step_count=1, last_exit_code=0)


def test_episode_ids_are_fresh_uuids(env: PythonCodeActEnv) -> None:
    seen = set()
    for _ in range(3):
        env.reset()
        episode_id = env.state.episode_id
        assert episode_id is not None
        assert str(uuid.UUID(episode_id)) == episode_id
        seen.add(episode_id)
    assert len(seen) == 3


def test_state_keeps_the_last_exit_code(env: PythonCodeActEnv) -> None:
    assert env.state.last_exit_code == 0
    step(env, "1 / 0")
    assert env.state.last_exit_code == 1
    step(env, "x = 1")
    assert env.state.last_exit_code == 0
    step(env, "1 / 0")
    env.reset()
    assert env.state.last_exit_code == 0


def test_what_ran_before_an_error_persists(env: PythonCodeActEnv) -> None:
    obs = step(env, "import math\ndef f():\n    return 2\na = 1\nprint('lost')\n1 / 0\nb = 2")
    assert (obs.stdout, obs.exit_code) == ("", 1)
    assert obs.stderr.endswith("ZeroDivisionError: division by zero\n")
    assert step(env, "a + f() + math.floor(math.pi)").stdout == "6"
    assert "The variable `b` is not defined" in step(env, "b").stderr


def test_episodes_never_end(env: PythonCodeActEnv) -> None:
    codes = ["x = 1", "1 / 0", "import os", "print('unclosed", "while True:\n    break"]
    assert not any(step(env, code).done for code in codes)


def test_code_over_the_cap_is_refused_and_the_session_kept(
    env: PythonCodeActEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert module.MAX_CODE_CHARS == 100_000
    step(env, "kept = 1")
    monkeypatch.setattr(module, "MAX_CODE_CHARS", 10)
    with pytest.raises(ValueError, match=r"the code is 11 characters long; .* at most 10$"):
        step(env, "x = 1234567")
    assert env.state.step_count == 1
    assert step(env, "kept").stdout == "1"


def test_step_before_reset_opens_a_session(code_host: None) -> None:
    env = PythonCodeActEnv()
    assert env.state == CodeState()
    assert step(env, "1 + 1").stdout == "2"
    assert env.state.step_count == 1


def test_the_env_speaks_the_coding_models() -> None:
    types = env_types(PythonCodeActEnv)
    assert types.action is CodeAction
    assert types.observation is CodeObservation
    assert types.state is CodeState
    assert PythonCodeActEnv.SUPPORTS_CONCURRENT_SESSIONS is True


def test_the_worker_awaits_its_async_methods_and_passes_the_deadline() -> None:
    kind = EnvKind.of(PythonCodeActEnv)
    assert (kind.async_reset, kind.async_step, kind.takes_timeout) == (True, True, True)


@pytest.mark.parametrize("timeout_s", [0.0, -1.0, float("inf"), float("nan")])
def test_the_deadline_must_be_positive_and_finite(timeout_s: float) -> None:
    with pytest.raises(ValueError, match="timeout_s must be a positive number of seconds"):
        PythonCodeActEnv(timeout_s=timeout_s)


SCRIPT = [
    "x = 3",
    "print('hi')\nx * 2",
    "def f(v):\n    return v + x\nf(1)",
    "import os",
    "y = 1\n1 / 0",
    "y",
    "print('unclosed",
    "{1, 2}",
    LONG,
]


def test_the_async_path_answers_as_the_sync_one(code_host: None) -> None:
    sync_env, async_env = PythonCodeActEnv(), PythonCodeActEnv()

    def summary(obs: CodeObservation, env: PythonCodeActEnv) -> tuple[Any, ...]:
        state = env.state.model_dump(exclude={"episode_id"})
        return (obs.model_dump(), state)

    sync_runs = [summary(sync_env.reset(episode_id="e"), sync_env)]
    sync_runs += [summary(step(sync_env, code), sync_env) for code in SCRIPT]
    sync_runs.append(summary(sync_env.reset(episode_id="e"), sync_env))
    sync_runs.append(summary(step(sync_env, "x"), sync_env))

    async def run_async() -> list[tuple[Any, ...]]:
        runs = [summary(await async_env.reset_async(episode_id="e"), async_env)]
        for code in SCRIPT:
            runs.append(summary(await async_env.step_async(CodeAction(code=code)), async_env))
        runs.append(summary(await async_env.reset_async(episode_id="e"), async_env))
        runs.append(summary(await async_env.step_async(CodeAction(code="x")), async_env))
        return runs

    assert asyncio.run(run_async()) == sync_runs
    assert async_env.state.episode_id == "e"
    sync_env.close()
    async_env.close()


# Deadlines and crashes, as a contained host reports them


HANG = "while True:\n    pass"
CRASH = "crash()"


class LosingSession(Session):
    """An in-process session that answers :data:`HANG` and :data:`CRASH` as a contained host
    would: it closes itself and raises."""

    def __init__(self) -> None:
        self.handler = PyExecutor()
        self.closed = False
        self.deadlines: list[float | None] = []

    def call(self, request: Request, timeout_s: float | None) -> Reply:
        assert not self.closed
        self.deadlines.append(timeout_s)
        if request["code"] == HANG:
            self.closed = True
            raise SessionTimedOut()
        if request["code"] == CRASH:
            self.closed = True
            raise SessionCrashed("the session's process was killed by signal 9")
        return self.handler.handle(request)

    async def call_async(self, request: Request, timeout_s: float | None) -> Reply:
        await asyncio.sleep(0)
        return self.call(request, timeout_s)

    def close(self) -> None:
        self.closed = True


class LosingHost(SessionHost):
    def __init__(self) -> None:
        self.opened: list[LosingSession] = []

    def open(self, factory: str) -> Session:
        assert factory == module.SESSION_FACTORY
        self.opened.append(LosingSession())
        return self.opened[-1]

    async def open_async(self, factory: str) -> Session:
        return self.open(factory)

    @property
    def layers(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        """Nothing to end."""


@pytest.fixture
def losing_host() -> Iterator[LosingHost]:
    losing = LosingHost()
    host.configure(lambda: losing)
    yield losing
    host.shutdown()
    host.reset_configuration()


def test_reset_replaces_the_session_and_close_ends_it(losing_host: LosingHost) -> None:
    env = PythonCodeActEnv()
    env.reset()
    env.reset()
    assert [s.closed for s in losing_host.opened] == [True, False]
    env.close()
    env.close()
    assert all(s.closed for s in losing_host.opened)


def test_the_deadline_is_the_envs_unless_the_step_names_one(losing_host: LosingHost) -> None:
    env = PythonCodeActEnv(timeout_s=2.5)
    env.reset()
    step(env, "x = 1")
    env.step(CodeAction(code="x = 2"), timeout_s=7.0)
    assert losing_host.opened[0].deadlines == [2.5, 7.0]
    assert PythonCodeActEnv().timeout_s == 30.0


@pytest.mark.parametrize(
    ("timeout_s", "shown"), [(None, "30"), (30.0, "30"), (2.5, "2.5"), (1, "1")]
)
def test_a_step_past_its_deadline_answers_and_the_episode_goes_on(
    losing_host: LosingHost, timeout_s: float | None, shown: str
) -> None:
    env = PythonCodeActEnv()
    env.reset(episode_id="e")
    step(env, "x = 1")
    obs = env.step(CodeAction(code=HANG), timeout_s=timeout_s)
    assert obs.model_dump(exclude={"reward"}) == {
        "stdout": "",
        "stderr": "ExecutionTimeoutError: Code execution exceeded the maximum execution time of "
        f"{shown} seconds",
        "exit_code": 1,
        "done": False,
        "metadata": {"last_code": HANG, "session_restarted": True},
    }
    assert obs.reward == pytest.approx(0.1)
    assert env.state == CodeState(episode_id="e", step_count=2, last_exit_code=1)
    obs = step(env, "x")
    assert obs.exit_code == 1
    assert "The variable `x` is not defined" in obs.stderr
    assert len(losing_host.opened) == 2
    assert env.state.step_count == 3


def test_a_crashed_session_raises_and_the_next_step_gets_a_fresh_one(
    losing_host: LosingHost,
) -> None:
    env = PythonCodeActEnv()
    env.reset(episode_id="e")
    step(env, "x = 1")
    with pytest.raises(SessionCrashed, match="killed by signal 9"):
        step(env, CRASH)
    assert env.state == CodeState(episode_id="e", step_count=1, last_exit_code=0)
    assert step(env, "y = 2").exit_code == 0
    assert "The variable `x` is not defined" in step(env, "x").stderr
    assert len(losing_host.opened) == 2


def test_the_async_path_loses_sessions_as_the_sync_one(losing_host: LosingHost) -> None:
    env = PythonCodeActEnv(timeout_s=4.0)

    async def run() -> CodeObservation:
        await env.reset_async()
        await env.step_async(CodeAction(code="x = 1"))
        with pytest.raises(SessionCrashed):
            await env.step_async(CodeAction(code=CRASH))
        timed_out = await env.step_async(CodeAction(code=HANG))
        assert (await env.step_async(CodeAction(code="1 + 1"))).stdout == "2"
        return timed_out

    obs = asyncio.run(run())
    assert obs.stderr.endswith("maximum execution time of 4 seconds")
    assert obs.metadata["session_restarted"] is True
    assert env.state.step_count == 3
    assert [s.closed for s in losing_host.opened] == [True, True, False]
