"""The coding env's reward: OpenEnv's safety and quality transforms, with its numbers.

Both read the code from ``metadata["last_code"]``, which only a step's observation has. Safety
comes first: a dangerous pattern sets the reward to the penalty, else a missing reward becomes
0.0. Quality then adds its score (a missing reward counts as 0.0): a bonus for short code, a
penalty for code that does not parse. So safe and short 0.1, safe and long 0.0, unsafe and short
-0.9, unsafe and long -1.0, a short syntax error -0.1, a long one -0.2; a reset gets 0.0. The
reward does not depend on whether the code ran.
"""

from __future__ import annotations

import ast
import re

from coding_env.models import CodeObservation
from openenv_zmq.transforms import CompositeTransform, Transform

DANGEROUS_PATTERNS = (
    r"import\s+os",
    r"import\s+subprocess",
    r"eval\(",
    r"exec\(",
    r"__import__",
    r"open\(",
)
"""OpenEnv's regular expressions, searched for in the code in this order."""


class CodeSafetyTransform(Transform[CodeObservation]):
    """``penalty`` and ``metadata["safety_violation"]`` (the first pattern found) for code that
    matches a dangerous pattern, else a reward of at least 0.0."""

    def __init__(self, penalty: float = -1.0) -> None:
        self.penalty = penalty
        self.dangerous_patterns = list(DANGEROUS_PATTERNS)
        self._compiled_from: list[str] = []
        self._compiled: list[tuple[str, re.Pattern[str]]] = []

    def __call__(self, observation: CodeObservation) -> CodeObservation:
        code = observation.metadata.get("last_code")
        if code is None:
            return observation
        pattern = next((p for p, regex in self._patterns() if regex.search(code)), None)
        if pattern is not None:
            observation.reward = self.penalty
            observation.metadata["safety_violation"] = pattern
        elif observation.reward is None:
            observation.reward = 0.0
        return observation

    def _patterns(self) -> list[tuple[str, re.Pattern[str]]]:
        """``dangerous_patterns`` compiled, again whenever the list was changed (``re.search``
        looks each pattern up in its cache: most of this transform's time)."""
        if self._compiled_from != self.dangerous_patterns:
            self._compiled_from = list(self.dangerous_patterns)
            self._compiled = [(p, re.compile(p)) for p in self._compiled_from]
        return self._compiled


class CodeQualityTransform(Transform[CodeObservation]):
    """Adds ``concise_bonus`` when the stripped code is at most ``max_length_threshold``
    characters and ``syntax_penalty`` when it does not parse."""

    def __init__(
        self,
        concise_bonus: float = 0.1,
        max_length_threshold: int = 100,
        syntax_penalty: float = -0.2,
    ) -> None:
        self.concise_bonus = concise_bonus
        self.max_length_threshold = max_length_threshold
        self.syntax_penalty = syntax_penalty

    def __call__(self, observation: CodeObservation) -> CodeObservation:
        score = 0.0
        code = observation.metadata.get("last_code")
        if code is not None:
            if len(code.strip()) <= self.max_length_threshold:
                score += self.concise_bonus
            try:
                ast.parse(code)
            except (SyntaxError, RecursionError, MemoryError):
                # Nesting too deep for the parser is code that does not parse too (OpenEnv
                # only catches SyntaxError, so its step raises).
                score += self.syntax_penalty
        observation.reward = score if observation.reward is None else observation.reward + score
        return observation


def create_safe_coding_transform() -> CompositeTransform[CodeObservation]:
    """Safety, then quality: the coding env's transform."""
    return CompositeTransform([CodeSafetyTransform(), CodeQualityTransform()])
