"""Constructors for the answers every side needs to send."""

from __future__ import annotations

from openenv_zmq.protocol.codec import EnvIds, Message
from openenv_zmq.protocol.ops import Op


def error_message(
    request_id: int,
    type_name: str,
    message: str,
    env_ids: EnvIds | None = None,
    traceback: str = "",
) -> Message:
    """A whole-request ``ERROR``; with ``env_ids``, each of those envs failed with ``type_name``."""
    meta = {"type": type_name, "message": message}
    if traceback:
        meta["traceback"] = traceback
    return Message(Op.ERROR, request_id=request_id, env_ids=env_ids, meta=meta)
