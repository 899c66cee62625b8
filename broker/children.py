"""Starting the broker's local child processes (workers, the gateway) out of a Ctrl-C's way."""

from __future__ import annotations

import signal
import threading
from multiprocessing.process import BaseProcess


def start_child(process: BaseProcess) -> None:
    """Start ``process`` ignoring SIGINT until it installs handlers of its own.

    The broker stops its children itself, with SIGTERM. A terminal's Ctrl-C reaches every
    process of the group: one landing while a child still started (importing, before its
    handlers were in) raised KeyboardInterrupt there, and the SIGTERM that followed cut the
    traceback short. An ignored signal stays ignored across exec, so the spawned interpreter
    starts ignoring it; a worker's handlers, and uvicorn's, take over once they run. Handlers
    can be set from the main thread only: elsewhere the child starts as it would.
    """
    if threading.current_thread() is not threading.main_thread():
        process.start()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process.start()
    finally:
        signal.signal(signal.SIGINT, previous)
