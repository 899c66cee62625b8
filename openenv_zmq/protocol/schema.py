"""What each op may carry: header fields, meta keys and named payload parts.

Kept as data so that one validator serves every op and the rules can be read at a glance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from openenv_zmq.autoreset import AutoresetMode
from openenv_zmq.protocol.ops import Op

AUTORESET_MODES = frozenset(mode.value for mode in AutoresetMode)
SESSION_BYTES = 16
"""Length of a client session token: 128 random bits, drawn by the broker."""
MAX_LABEL_CHARS = 256
"""Longest a worker's ``provider``, ``host`` or ``instance`` may be: a pod name is at most 253
characters, a container id 64; anything longer is refused, not cut."""

Check = Callable[[Any], bool]


def _is_nonneg_int(v: Any) -> bool:
    return type(v) is int and v >= 0


def _is_pos_int(v: Any) -> bool:
    return type(v) is int and v > 0


def _is_str(v: Any) -> bool:
    return type(v) is str


def _is_label(v: Any) -> bool:
    return type(v) is str and 0 < len(v) <= MAX_LABEL_CHARS


def _is_number(v: Any) -> bool:
    return type(v) in (int, float)


def _is_pos_number(v: Any) -> bool:
    return type(v) in (int, float) and v > 0 and v != float("inf")


def _is_str_map(v: Any) -> bool:
    return type(v) is dict and all(type(k) is str for k in v)


def _is_str_to_str_map(v: Any) -> bool:
    return _is_str_map(v) and all(type(x) is str for x in v.values())


def _is_session(v: Any) -> bool:
    return type(v) is bytes and len(v) == SESSION_BYTES


def _is_autoreset(v: Any) -> bool:
    return v in AUTORESET_MODES


def _is_str_list(v: Any) -> bool:
    return type(v) is list and all(type(x) is str for x in v)


@dataclass(frozen=True)
class OpSchema:
    """Header requirements of one op."""

    needs_worker: bool = False
    needs_env_ids: bool = False
    meta: dict[str, tuple[Check, bool]] = field(default_factory=dict)
    """meta key -> (check, required)."""
    parts: frozenset[str] = frozenset()
    """Names of payload parts the op may carry."""


SCHEMAS: dict[Op, OpSchema] = {
    Op.ALLOC: OpSchema(meta={"env": (_is_str, True), "num_envs": (_is_pos_int, True)}),
    Op.STATUS: OpSchema(),
    Op.PING: OpSchema(),
    Op.HELLO: OpSchema(),
    Op.CREATE: OpSchema(
        needs_worker=True,
        needs_env_ids=True,
        meta={
            "env": (_is_str, True),
            "kwargs": (_is_str_map, False),
            "autoreset": (_is_autoreset, False),
            "concurrency": (_is_pos_int, False),
            "timeout_s": (_is_pos_number, False),
        },
    ),
    Op.RESET: OpSchema(
        needs_worker=True,
        needs_env_ids=True,
        parts=frozenset({"seeds", "kwargs"}),
    ),
    Op.STEP: OpSchema(
        needs_worker=True,
        needs_env_ids=True,
        meta={"timeout_s": (_is_pos_number, False)},
        parts=frozenset({"actions"}),
    ),
    Op.STATE: OpSchema(needs_worker=True, needs_env_ids=True),
    Op.CLOSE: OpSchema(needs_worker=True, needs_env_ids=True),
    Op.REPLY: OpSchema(
        meta={
            "spaces": (_is_str_map, False),
            "status": (_is_str_map, False),
            "session": (_is_session, False),
            "lease_s": (_is_pos_number, False),
            "heartbeat_s": (_is_pos_number, False),
        },
        parts=frozenset(
            {
                "obs",
                "final_obs",
                "rew",
                "term",
                "trunc",
                "errors",
                "states",
                "workers",
                "row_types",
                "final_row_types",
            }
        ),
    ),
    Op.ERROR: OpSchema(
        meta={
            "type": (_is_str, True),
            "message": (_is_str, True),
            "traceback": (_is_str, False),
        }
    ),
    Op.READY: OpSchema(
        meta={
            "envs": (_is_str_list, True),
            "capacity": (_is_pos_int, True),
            "name": (_is_str, True),
            "pid": (_is_nonneg_int, True),
            "sandbox": (_is_str_to_str_map, False),
            "registration": (_is_nonneg_int, False),
            # Where it runs, for status: who started it ("local", "remote", "docker", ...),
            # its host name, and its container, actor or pod id.
            "provider": (_is_label, False),
            "host": (_is_label, False),
            "instance": (_is_label, False),
        }
    ),
    Op.WELCOME: OpSchema(
        meta={
            "worker": (_is_nonneg_int, True),
            "heartbeat": (_is_number, True),
            "registration": (_is_nonneg_int, False),
        }
    ),
    Op.HEARTBEAT: OpSchema(),
    Op.DISCONNECT: OpSchema(meta={"reason": (_is_str, True)}),
    Op.BYE: OpSchema(),
    Op.DRAIN: OpSchema(),
}

assert set(SCHEMAS) == set(Op), "every op needs a schema"

HEADER_FIELDS = frozenset({"v", "op", "id", "w", "ids", "s", "g", "meta", "pl"})
