"""Fixtures of the tests that start real broker and worker processes (see tests/processes.py)."""

from tests.processes import no_leaked_sockets, procs

__all__ = ["no_leaked_sockets", "procs"]
