"""Process titles: what ``ps`` and ``top`` show for each process of a cluster."""

from __future__ import annotations

import threading

from setproctitle import setproctitle

PREFIX = "openenv-zmq"


def name_process(role: str, *details: str) -> None:
    """Title this process ``openenv-zmq ROLE DETAILS...`` (e.g. ``openenv-zmq worker local-0
    tcp://127.0.0.1:5556``), when called from its main thread: run in a thread of some other
    program (a test, a notebook), a broker or worker leaves its host's title alone."""
    if threading.current_thread() is threading.main_thread():
        setproctitle(" ".join((PREFIX, role, *details)))
