"""The lifecycle of one env slot, the same for a structured env and an index of a vector env.

```
NEEDS_RESET --reset returned--> RUNNING <--step / reset returned--> DONE
     ^                                                                |
     +---------------------- a reset raised --------------------------+
```

Every status that follows a reset or step is decided here. A step that returned settles the
slot (:func:`settled`, :func:`settled_many`): DONE when its episode ended, else RUNNING. A reset
goes through :func:`after_reset`: one that raised leaves no episode to step (NEEDS_RESET). A step
that raised leaves the episode as it was (OpenEnv keeps the session). A reset or step that
returned what its reply cannot carry (a value msgpack cannot encode, a row too large for the
reply) settles the slot all the same: the env answers on, only that answer became an error row.
Stepping a DONE env is allowed: with autoreset off it is the env's call. A structured slot is
forgotten when closed; a vector index is marked CLOSED, as its vector env lives on until all its
indices are closed.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import numpy.typing as npt


class SlotStatus(IntEnum):
    """Where one env instance is in its episode. The values fit a ``uint8`` array."""

    NEEDS_RESET = 0
    RUNNING = 1
    DONE = 2
    CLOSED = 3


StatusArray = npt.NDArray[np.uint8]
"""One :class:`SlotStatus` value per index of a vector env."""

_RUNNING = np.uint8(SlotStatus.RUNNING)
_DONE = np.uint8(SlotStatus.DONE)


def settled(ended: bool) -> SlotStatus:
    """The status of a slot whose reset or step returned; ``ended`` is its episode's end."""
    return SlotStatus.DONE if ended else SlotStatus.RUNNING


def after_reset(raised: bool = False, ended: bool = False) -> SlotStatus:
    """The status of a slot after a reset: NEEDS_RESET if it raised, else :func:`settled`."""
    return SlotStatus.NEEDS_RESET if raised else settled(ended)


def settled_many(ended: npt.NDArray[np.bool_]) -> StatusArray:
    """:func:`settled` for a batch of indices, in one array operation."""
    return np.where(ended, _DONE, _RUNNING)
