"""``CodingEnv`` builds OpenEnv's frames and reads its replies (no server needed)."""

from __future__ import annotations

import pytest
from coding_env import CodeAction, CodeObservation, CodeState, CodingEnv


@pytest.fixture
def client() -> CodingEnv:
    return CodingEnv(base_url="http://localhost:8000")


def test_package_exports() -> None:
    import coding_env

    assert coding_env.__all__ == ["CodeAction", "CodeObservation", "CodeState", "CodingEnv"]


def test_step_payload_is_the_code(client: CodingEnv) -> None:
    assert client._step_payload(CodeAction(code="print(1)")) == {"code": "print(1)"}


def test_a_step_reply_is_parsed(client: CodingEnv) -> None:
    # what OpenEnv's server sends: the observation without reward, done and metadata
    result = client._parse_result(
        {
            "observation": {"stdout": "1\n", "stderr": "", "exit_code": 0},
            "reward": 0.1,
            "done": False,
        }
    )
    assert result.reward == 0.1
    assert result.done is False
    assert result.observation == CodeObservation(stdout="1\n", exit_code=0, reward=0.1)


def test_a_reply_carrying_metadata_keeps_it(client: CodingEnv) -> None:
    result = client._parse_result(
        {
            "observation": {
                "stdout": "",
                "stderr": "Traceback ...",
                "exit_code": 1,
                "metadata": {"last_code": "import os", "safety_violation": r"import\s+os"},
            },
            "reward": -0.9,
            "done": False,
        }
    )
    assert result.observation.exit_code == 1
    assert result.observation.metadata == {
        "last_code": "import os",
        "safety_violation": r"import\s+os",
    }


def test_missing_fields_take_their_defaults(client: CodingEnv) -> None:
    result = client._parse_result({"observation": {}})
    assert result.observation == CodeObservation()
    assert (result.reward, result.done) == (None, False)


def test_state_is_parsed(client: CodingEnv) -> None:
    state = client._parse_state({"episode_id": "e", "step_count": 3, "last_exit_code": 1})
    assert state == CodeState(episode_id="e", step_count=3, last_exit_code=1)
    assert client._parse_state({}) == CodeState()
