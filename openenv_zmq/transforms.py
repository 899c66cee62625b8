"""OpenEnv's observation transforms: ``Transform`` and ``CompositeTransform``, same names, same use.

A transform takes an observation and returns it, possibly changed (a reward added, metadata
recorded), as in TorchRL. An env keeps its transform in ``self.transform`` (set through
``Environment.__init__``) and applies it itself to what ``reset`` and ``step`` return; the
worker never does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Generic, TypeVar

from openenv_zmq.types import Observation

ObsT = TypeVar("ObsT", bound=Observation)


class Transform(ABC, Generic[ObsT]):
    """Maps an observation to an observation; it may change the one it is given."""

    @abstractmethod
    def __call__(self, observation: ObsT) -> ObsT:
        """The transformed observation."""


class CompositeTransform(Transform[ObsT]):
    """Applies ``transforms`` in order, each to what the one before returned."""

    def __init__(self, transforms: Sequence[Transform[ObsT]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, observation: ObsT) -> ObsT:
        for transform in self.transforms:
            observation = transform(observation)
        return observation
