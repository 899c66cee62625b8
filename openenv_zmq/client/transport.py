"""Socket settings and defaults shared by the sync and asyncio clients."""

from __future__ import annotations

from typing import Any

from openenv_zmq.errors import BrokerUnreachable, ClientError, NoWorkerAvailable

DEFAULT_TIMEOUT = 60.0
"""Seconds a request may wait for its answer (OpenEnv's message timeout)."""
DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds the first PING may wait for the broker (OpenEnv's connect timeout)."""
CLOSE_TIMEOUT = 5.0
"""Closing must not hang on a dead broker: its slots are gone with it anyway."""


WORKER_POLL_SECONDS = 0.05


def live_workers(status: dict[str, Any], env: str | None) -> list[dict[str, Any]]:
    """The live workers of a ``status()`` answer, those hosting ``env`` when given."""
    return [
        w for w in status["workers"] if w["state"] == "READY" and (env is None or env in w["envs"])
    ]


def too_few_workers(joined: int, count: int, env: str | None, timeout: float) -> NoWorkerAvailable:
    hosting = f" hosting {env!r}" if env is not None else ""
    return NoWorkerAvailable(f"{joined} of {count} workers{hosting} joined within {timeout:g} s")


def unreachable(address: str, timeout: float) -> BrokerUnreachable:
    return BrokerUnreachable(f"no broker answered at {address} within {timeout:g} s")


def no_default_group() -> ClientError:
    return ClientError(
        "this client has no default env group: pass env=... to the constructor or use make()"
    )
