"""The learners in ``examples/``: the numpy one learns on the cluster it starts itself; the torch
ones run a few iterations against one broker of the module's (sparing each a cluster start)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import REPO_ROOT, Broker, running

RANDOM_POLICY_RETURN = 22  # CartPole's mean episode return under random actions
ENV_STEP_BUDGET = 150_000


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with running(tmp_path_factory.mktemp("procs")) as procs:
        yield procs.broker(workers=1, envs=("cartpole",))


def test_numpy_learner_reaches_150_within_its_budget() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "examples/cem_cartpole.py",
            "--seed=0",
            "--target=150",
            f"--max-env-steps={ENV_STEP_BUDGET}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    result = records[-1]
    assert result["result"]
    assert records[0]["mean_policy_return"] < 150 < result["mean_policy_return"]
    assert records[0]["candidates_mean_return"] < 2 * RANDOM_POLICY_RETURN
    # the budget is checked after each iteration: the last one may run past it, by one at most
    assert records[-2]["env_steps"] < ENV_STEP_BUDGET


@pytest.mark.parametrize(
    ("script", "ends_with"),
    [
        ("examples/ppo_cartpole.py", "iteration 4/4"),
        ("examples/sb3_ppo_cartpole.py", "mean episode return of the trained policy"),
    ],
)
@pytest.mark.timeout(150)
def test_the_torch_examples_run(
    broker: Broker, script: str, ends_with: str, tmp_path: Path
) -> None:
    curve = tmp_path / "curve.csv"
    extra = (
        ["--n-steps=64", "--eval-episodes=2"]
        if "sb3" in script
        else ["--num-steps=32", f"--curve={curve}"]
    )
    common = [f"--address={broker.frontend}", "--num-envs=4", "--total-timesteps=512"]
    done = subprocess.run(
        [sys.executable, script, *common, *extra],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert ends_with in done.stdout.strip().splitlines()[-1]
    if curve.exists():
        rows = curve.read_text().splitlines()
        assert rows[0] == "global_step,episodic_return" and len(rows) > 10
