"""The coding env's reward, case by case as OpenEnv's transforms give it."""

from __future__ import annotations

import pytest
from coding_env import CodeObservation
from coding_env.server.transforms import (
    DANGEROUS_PATTERNS,
    CodeQualityTransform,
    CodeSafetyTransform,
    create_safe_coding_transform,
)

LONG = "x = " + " + ".join(str(i) for i in range(50))
"""Safe code over the 100 characters of the concision bonus."""


def rewarded(code: str) -> CodeObservation:
    return create_safe_coding_transform()(CodeObservation(metadata={"last_code": code}))


@pytest.mark.parametrize(
    ("code", "reward"),
    [
        ("x = 5", 0.1),
        ("print('Hello')", 0.1),
        (LONG, 0.0),
        ("import os", -0.9),
        ("eval('1+1')", -0.9),
        ("exec('x=1')", -0.9),
        ("with open('f.txt') as f: pass", -0.9),
        ("import os\n" + "x = 1\n" * 50, -1.0),
        ("print('unclosed", -0.1),
        (LONG + "\nprint('unclosed", -0.2),
        ("eval(", -1.1),
        ("x = 5" + " " * 200, 0.1),
        ("  x = 5", -0.1),
    ],
)
def test_reward(code: str, reward: float) -> None:
    assert rewarded(code).reward == pytest.approx(reward, rel=1e-9)


def test_the_bonus_ends_at_100_stripped_characters() -> None:
    assert rewarded("x" * 100).reward == pytest.approx(0.1)
    assert rewarded("x" * 101).reward == 0.0


@pytest.mark.parametrize(
    ("code", "pattern"),
    [
        ("import os", r"import\s+os"),
        ("import  subprocess", r"import\s+subprocess"),
        ("eval('x')", r"eval\("),
        ("exec('x=1')", r"exec\("),
        ("__import__('os')", r"__import__"),
        ("open('file.txt')", r"open\("),
        ("open('f')\nimport os", r"import\s+os"),
    ],
)
def test_a_violation_names_the_first_pattern_that_matches(code: str, pattern: str) -> None:
    observation = rewarded(code)
    assert observation.metadata == {"last_code": code, "safety_violation": pattern}
    assert observation.reward == pytest.approx(-0.9)


def test_the_patterns_are_openenvs() -> None:
    assert DANGEROUS_PATTERNS == (
        r"import\s+os",
        r"import\s+subprocess",
        r"eval\(",
        r"exec\(",
        r"__import__",
        r"open\(",
    )


def test_safe_code_has_no_violation() -> None:
    assert rewarded("x = 1 + 2").metadata == {"last_code": "x = 1 + 2"}


def test_an_observation_without_code_gets_zero() -> None:
    # the reset observation: safety leaves the reward alone, quality adds nothing to None
    observation = create_safe_coding_transform()(CodeObservation())
    assert observation.reward == 0.0
    assert observation.metadata == {}
    assert CodeSafetyTransform()(CodeObservation()).reward is None


def test_safety_overrides_a_reward_and_quality_adds_to_it() -> None:
    unsafe = CodeObservation(reward=5.0, metadata={"last_code": "import os"})
    assert CodeSafetyTransform()(unsafe).reward == -1.0
    safe = CodeObservation(reward=5.0, metadata={"last_code": "x = 1"})
    assert CodeSafetyTransform()(safe).reward == 5.0
    assert CodeQualityTransform()(safe).reward == pytest.approx(5.1)


def test_code_nested_too_deep_to_parse_is_a_syntax_error() -> None:
    code = "1" + "+1" * 300_000
    assert rewarded(code).reward == pytest.approx(-0.2)


def test_the_numbers_can_be_changed() -> None:
    transform = CodeQualityTransform(concise_bonus=1.0, max_length_threshold=3, syntax_penalty=-5.0)
    assert transform(CodeObservation(metadata={"last_code": "x=("})).reward == -4.0
    unsafe = CodeObservation(metadata={"last_code": "eval(1)"})
    assert CodeSafetyTransform(penalty=-7.0)(unsafe).reward == -7.0


def test_patterns_changed_after_use_are_the_ones_searched() -> None:
    safety = CodeSafetyTransform()
    code = "breakpoint()"
    assert safety(CodeObservation(metadata={"last_code": code})).reward == 0.0
    safety.dangerous_patterns.append(r"breakpoint\(")
    flagged = safety(CodeObservation(metadata={"last_code": code}))
    assert (flagged.reward, flagged.metadata["safety_violation"]) == (-1.0, r"breakpoint\(")
    safety.dangerous_patterns = [r"import\s+os"]
    assert safety(CodeObservation(metadata={"last_code": code})).reward == 0.0
