"""The compat tests that start brokers fail, as the integration tests do, on a leaked socket."""

from tests.processes import no_leaked_sockets

__all__ = ["no_leaked_sockets"]
