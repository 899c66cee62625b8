"""What ``/proc`` says of a process, read without psutil."""

from __future__ import annotations

from pathlib import Path


def started(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``None`` if it is gone): with the pid,
    it names one process, where a pid alone may have been reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: count after it.
    return int(stat.rsplit(")", 1)[1].split()[19])
