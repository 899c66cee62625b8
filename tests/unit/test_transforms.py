"""OpenEnv's ``Transform`` and ``CompositeTransform``."""

from __future__ import annotations

import pytest

from openenv_zmq.transforms import CompositeTransform, Transform
from openenv_zmq.types import Observation


class Append(Transform[Observation]):
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __call__(self, observation: Observation) -> Observation:
        observation.metadata.setdefault("tags", []).append(self.tag)
        return observation


class Replace(Transform[Observation]):
    def __call__(self, observation: Observation) -> Observation:
        return Observation(reward=1.0, metadata=dict(observation.metadata))


def test_transform_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        Transform()  # type: ignore[abstract]


def test_composite_applies_each_in_order_to_what_the_last_returned() -> None:
    composite = CompositeTransform([Append("a"), Replace(), Append("b")])
    observation = composite(Observation())
    assert observation.reward == 1.0
    assert observation.metadata == {"tags": ["a", "b"]}


def test_an_empty_composite_returns_the_observation_itself() -> None:
    observation = Observation()
    assert CompositeTransform[Observation]([])(observation) is observation
