"""Array spaces in Gymnasium's style, without depending on Gymnasium.

An env that speaks arrays declares ``observation_space`` and ``action_space``; batches of its
observations and actions then travel as one numpy array each (raw buffers on the wire).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Box:
    """Real or integer arrays of a fixed shape, bounded elementwise by ``low`` and ``high``."""

    low: float | npt.NDArray[Any]
    high: float | npt.NDArray[Any]
    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    def __init__(
        self,
        low: float | npt.ArrayLike,
        high: float | npt.ArrayLike,
        shape: tuple[int, ...] | None = None,
        dtype: npt.DTypeLike = np.float32,
    ) -> None:
        kind = np.dtype(dtype)
        low_a, high_a = np.asarray(low, dtype=kind), np.asarray(high, dtype=kind)
        shape = tuple(shape) if shape is not None else np.broadcast(low_a, high_a).shape
        object.__setattr__(self, "low", np.broadcast_to(low_a, shape).copy())
        object.__setattr__(self, "high", np.broadcast_to(high_a, shape).copy())
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", kind)

    def contains_batch(self, values: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        """Per row of ``values``, whether it lies in the box."""
        axes = tuple(range(1, values.ndim))
        inside = (values >= self.low) & (values <= self.high)
        return np.asarray(inside.all(axis=axes) if axes else inside, dtype=np.bool_)


@dataclass(frozen=True)
class Discrete:
    """Integers ``start .. start + n - 1``; a batch is an ``int64`` array of shape ``(batch,)``."""

    n: int
    start: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        """One value is a scalar: ``()``."""
        return ()

    @property
    def dtype(self) -> np.dtype[Any]:
        """``int64``, as Gymnasium's ``Discrete``."""
        return np.dtype(np.int64)

    def contains_batch(self, values: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        """Per value, whether it is one of the space's integers."""
        return np.asarray((values >= self.start) & (values < self.start + self.n), dtype=np.bool_)


Space = Box | Discrete


def batch_shape(space: Space, n: int) -> tuple[int, ...]:
    """The shape of ``n`` stacked values of ``space``."""
    return (n, *space.shape)


def _bound_to_wire(bound: npt.NDArray[Any]) -> Any:
    # Most boxes share one bound per side (pixels 0..255, unbounded floats): send it once.
    flat = bound.reshape(-1)
    return flat[0].item() if flat.size and (flat == flat[0]).all() else bound.tolist()


def space_to_wire(space: Space) -> dict[str, Any]:
    """What a CREATE answer says of an array env's space: how to shape and type its arrays
    (``dtype``, ``shape``), and the space itself (``low``/``high`` or ``n``/``start``)."""
    wire: dict[str, Any] = {"dtype": space.dtype.str, "shape": list(space.shape)}
    if isinstance(space, Box):
        low, high = np.asarray(space.low), np.asarray(space.high)
        wire |= {"low": _bound_to_wire(low), "high": _bound_to_wire(high)}
    else:
        wire |= {"n": space.n, "start": space.start}
    return wire


def space_from_wire(wire: dict[str, Any]) -> Space | None:
    """The space :func:`space_to_wire` described; ``None`` from a worker that sent only the
    array layout."""
    if "n" in wire:
        return Discrete(int(wire["n"]), int(wire.get("start", 0)))
    if "low" in wire and "high" in wire:
        return Box(wire["low"], wire["high"], tuple(wire["shape"]), wire["dtype"])
    return None
