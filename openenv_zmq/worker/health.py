"""A file that shows a probe how the worker is: for Kubernetes exec probes, or any supervisor.

A worker listens on no port (it connects out to the broker), so a probe cannot knock; and
``openenv-broker status`` as a probe would start an interpreter with the whole package, a CURVE
handshake and a broker round trip every few seconds per pod. Instead the worker, given
``--health-file PATH``, rewrites ``PATH`` at most every :data:`BEAT_SECONDS` while its loop turns
(the stepping thread between requests, the keep-alive thread while a batch steps), holding its
lifecycle state: ``starting``, ``ready`` or ``draining`` (see
:class:`~openenv_zmq.worker.link.WorkerLifecycle`). It removes the file when it stops.

So a probe needs only the standard library (:data:`PROBE`):

- *ready*: the file says ``ready`` and was written lately: the worker is registered with its
  broker, and takes envs;
- *alive*: the file was written lately, whatever it says: the loop is not stuck (a broker that
  is down leaves the worker ``starting``, alive; restarting it would not help).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

BEAT_SECONDS = 1.0
"""How often the file is rewritten while nothing changes."""

PROBE = (
    "import os,sys,time;"
    "p,want,age=sys.argv[1],sys.argv[2],float(sys.argv[3]);"
    "s=open(p).read().strip();"
    "sys.exit(not ((want=='alive' or s==want) and time.time()-os.stat(p).st_mtime<=age))"
)
"""``python -I -S -c PROBE PATH ready|alive MAX_AGE_S``: exit code 0 when the worker is so, 1
(or a traceback naming the missing file) when not. Standard library only, so it costs a bare
interpreter start, not an import of this package."""


class HealthFile:
    """The worker's health file at ``path``; :meth:`beat` often, :meth:`remove` at the end.

    Never raises: a file that cannot be written is logged once and the worker serves on (its
    probe then fails, which says as much).
    """

    def __init__(self, path: str | os.PathLike[str], every: float = BEAT_SECONDS) -> None:
        self.path = Path(path)
        self._every = every
        self._state = ""
        self._next = float("-inf")
        self._failed = False

    def beat(self, state: str, now: float) -> None:
        """The worker is in ``state`` at ``now`` (a monotonic clock): rewrite the file if the
        state changed or the last write is :data:`BEAT_SECONDS` old."""
        if state == self._state and now < self._next:
            return
        self._state, self._next = state, now + self._every
        scratch = self.path.with_name(f".{self.path.name}.tmp")
        try:
            scratch.write_text(f"{state}\n", encoding="ascii")
            os.replace(scratch, self.path)  # a probe never reads half a file
        except OSError as exc:
            if not self._failed:
                log.warning("cannot write the health file %s: %s", self.path, exc)
            self._failed = True

    def remove(self) -> None:
        """The worker stopped: no file, so no probe passes."""
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove the health file %s: %s", self.path, exc)
