"""What ``/proc`` says of a process, read without psutil."""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int) -> list[str]:
    """Fields 3 on of ``/proc/PID/stat``; :class:`OSError` when there is no such process."""
    # The command name (field 2) is in parentheses and may hold spaces: count after it.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def started(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``None`` if it is gone): with the pid,
    it names one process, where a pid alone may have been reused."""
    try:
        return int(_stat_fields(pid)[19])
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds process ``pid`` (every thread) has spent; :class:`OSError`
    when there is no such process."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
