"""What the fuzz run sends: random frames, broken and mutated protocol messages, and
well-formed requests that name what is not the sender's. Pure: no sockets.

:class:`Garbage` draws one message at a time from a seeded :class:`random.Random`. Frontend
messages are sent from a client DEALER, so they are ``[header, *payload]``; backend messages
from a would-be worker's DEALER, so they start with a route frame (``b""`` for control).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from openenv_zmq.protocol import Frame, Message, Op, encode
from openenv_zmq.protocol.schema import SESSION_BYTES

FRONTEND_KINDS = (
    "random bytes",
    "mutated bytes",
    "bad header field",
    "stranger's request",
    "not its group",
    "bad payload",
)
"""Kinds of frontend garbage, drawn with :data:`FRONTEND_WEIGHTS`:

- random bytes: 1-3 frames of 0-256 random bytes;
- mutated bytes: a valid HELLO / PING / STATUS / ALLOC / CREATE / RESET / STEP / STATE / CLOSE
  (random session token, group, env ids, worker) with bytes flipped, cut, inserted, replaced by
  msgpack headers declaring huge sizes, or frames dropped, added or swapped;
- bad header field: such a message with one header field set to a wrong version, an unknown op,
  a wrong type, a huge declared array shape, a bad dtype, an unknown field or meta key;
- stranger's request: such a message, well-formed, with a random session token;
- not its group: a well-formed request of the fuzzer's own session naming random groups, env
  ids or workers, or an ALLOC of an env no worker hosts or of more envs than fit;
- bad payload: a request on the fuzzer's own envs, forwarded to their worker, with garbage
  actions, seeds, reset kwargs or constructor kwargs.
"""
FRONTEND_WEIGHTS = (15, 25, 25, 12, 11, 12)
BACKEND_KINDS = ("backend garbage", "fake worker")
"""At the backend: random frames and mutated control messages; and well-formed READY /
HEARTBEAT / BYE / answers from peers that are not workers (a READY registers a fake worker
hosting an env no client asks for, which then goes silent)."""

HUGE_HEADERS = (
    b"\xdd\xff\xff\xff\xff",  # array32 of 2**32 - 1 items
    b"\xdf\xff\xff\xff\xff",  # map32 of 2**32 - 1 pairs
    b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GiB
    b"\xdb\xff\xff\xff\xff",  # str32 of 4 GiB
    b"\xc1",  # never used
)
BAD_VALUES: tuple[Any, ...] = (
    None,
    -1,
    2**63,
    1.5,
    float("nan"),
    "x",
    b"\x00" * 9,
    [],
    [1, [2, [3]]],
    {"k": 1},
    {1: 2},
    True,
)
BAD_FIELDS: dict[str, tuple[Any, ...]] = {
    "v": (0, 1, 3, 255, -1, "2", 2.0, None, True),
    "op": (0, 5, 9, 15, 22, 35, 99, -3, 2**63, "STEP", None, 1.0),
    "id": (-1, 2**64 - 1, "7", 1.5, [1], None),
    "w": (-1, "0", 2**63, 1.5, None, [0]),
    "ids": (b"\x00" * 7, b"\xff" * 9, "ids", 5, [1, 2], None),
    "s": (b"", b"\x00" * 15, b"\x01" * 17, "s" * 16, 16, None),
    "g": (-5, 2**64 - 1, "g", 1.5, None, [1]),
    "meta": (
        "meta",
        [],
        {"unknown": 1},
        {"env": 5},
        {"env": "echo", "num_envs": -1},
        {"env": "echo", "num_envs": 2**40},
        {"env": "echo", "num_envs": 0},
        {"timeout_s": float("inf")},
        {"timeout_s": -1.0},
        {"autoreset": "sometimes", "env": "echo"},
        {"kwargs": {1: 2}, "env": "echo"},
    ),
    "pl": (
        "pl",
        [1],
        [["actions", "a", "<f8", [2**39, 2**39]]],
        [["actions", "a", "<f8", [2**41]]],
        [["actions", "a", "<c16", [1]]],
        [["actions", "a", "|O", [1]]],
        [["actions", "a", "<f4", [1] * 9]],
        [["actions", "a", "<f4", [-1]]],
        [["actions", "m"], ["actions", "m"]],
        [["nope", "m"]],
        [["actions", "z"]],
        [[]],
    ),
}


REQUESTS = (
    Op.HELLO,
    Op.PING,
    Op.STATUS,
    Op.ALLOC,
    Op.CREATE,
    Op.RESET,
    Op.STEP,
    Op.STATE,
    Op.CLOSE,
)


def _random_bytes(rng: random.Random, low: int = 0, high: int = 256) -> bytes:
    return rng.randbytes(rng.randint(low, high))


@dataclass
class Owned:
    """The fuzzer's own session and envs (made with real HELLO, ALLOC and CREATE)."""

    session: bytes
    group: int
    env_ids: np.ndarray
    workers: np.ndarray
    """The worker id of each env id."""

    def by_worker(self) -> dict[int, np.ndarray]:
        return {int(w): self.env_ids[self.workers == w] for w in np.unique(self.workers)}


@dataclass
class Garbage:
    """Draws fuzz messages; ``worker_ids`` are the real workers' ids (so that a stranger's
    request may name a live worker)."""

    rng: random.Random
    owned: Owned
    worker_ids: list[int]
    drawn: dict[str, int] = field(default_factory=dict)

    # -------------------------------------------------------------- frontend

    def frontend(self, request_id: int) -> list[Frame]:
        """One message for the broker's frontend, stamped ``request_id`` where it has one."""
        kind = self.rng.choices(FRONTEND_KINDS, FRONTEND_WEIGHTS)[0]
        self.drawn[kind] = self.drawn.get(kind, 0) + 1
        make: Callable[[int], list[Frame]] = {
            "random bytes": self._random_frames,
            "mutated bytes": self._mutated,
            "bad header field": self._bad_field,
            "stranger's request": lambda rid: encode(self._valid(rid)),
            "not its group": lambda rid: encode(self._not_its_group(rid)),
            "bad payload": self._bad_payload,
        }[kind]
        return make(request_id)

    def _random_frames(self, request_id: int) -> list[Frame]:
        return [_random_bytes(self.rng) for _ in range(self.rng.randint(1, 3))]

    def _env_ids(self) -> np.ndarray:
        n = self.rng.choice((1, 2, 8, 64, 300))
        return np.array([self.rng.randrange(2**63) for _ in range(n)], dtype=np.int64)

    def _valid(self, request_id: int, session: bytes | None = None) -> Message:
        """A well-formed request of a random op, for a random (or the given) session, naming
        random env ids, group and worker."""
        rng = self.rng
        op = rng.choice(REQUESTS)
        session = rng.randbytes(SESSION_BYTES) if session is None else session
        if op in (Op.HELLO, Op.STATUS):
            return Message(op, request_id)
        if op is Op.PING:
            return Message(op, request_id, session=rng.choice((session, None)))
        group = rng.randrange(2**64)
        if op is Op.ALLOC:
            meta = {"env": rng.choice(("echo", "nope", "gym:Nope-v0")), "num_envs": 4}
            ids = None if rng.random() < 0.5 else np.arange(group % 2**62, group % 2**62 + 4)
            return Message(op, request_id, env_ids=ids, meta=meta, session=session, group=group)
        env_ids = self._env_ids()
        worker = rng.choice([*self.worker_ids, rng.randrange(2**31)])
        parts: dict[str, Any] = {}
        meta = {}
        if op is Op.CREATE:
            meta = {"env": "echo"}
        elif op is Op.STEP:
            parts = {"actions": [{"message": "hi"}] * len(env_ids)}
        elif op is Op.RESET:
            parts = {"seeds": list(range(len(env_ids)))}
        return Message(
            op, request_id, worker, env_ids, meta=meta, parts=parts, session=session, group=group
        )

    def _mutated(self, request_id: int) -> list[Frame]:
        frames = [bytes(f) for f in encode(self._valid(request_id))]
        rng = self.rng
        how = rng.randrange(6)
        target = rng.randrange(len(frames))
        data = bytearray(frames[target])
        if how == 0 and data:  # flip bytes
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= rng.randint(1, 255)
        elif how == 1:  # cut
            del data[rng.randint(0, len(data)) :]
        elif how == 2:  # insert
            at = rng.randint(0, len(data))
            data[at:at] = _random_bytes(rng, 1, 16)
        elif how == 3:  # a msgpack header declaring a huge size, in place of a byte
            at = rng.randint(0, len(data))
            data[at : at + 1] = rng.choice(HUGE_HEADERS)
        frames[target] = bytes(data)
        if how == 4:  # drop or add frames
            if len(frames) > 1 and rng.random() < 0.5:
                del frames[rng.randrange(1, len(frames))]
            else:
                frames.extend(_random_bytes(rng) for _ in range(rng.randint(1, 2)))
        elif how == 5 and len(frames) > 1:  # header and payload swapped
            frames[0], frames[-1] = frames[-1], frames[0]
        return frames

    def _bad_field(self, request_id: int) -> list[Frame]:
        frames = encode(self._valid(request_id))
        header = msgpack.unpackb(frames[0])
        name = self.rng.choice([*BAD_FIELDS, "extra", "missing"])
        if name == "extra":
            header[self.rng.choice(("x", "version", "ops", "pl2"))] = 1
        elif name == "missing":
            header.pop(self.rng.choice(("v", "op")), None)
        else:
            value = self.rng.choice(BAD_FIELDS[name] + BAD_VALUES)
            if value is None:
                header.pop(name, None)
            else:
                header[name] = value
        return [msgpack.packb(header, use_bin_type=True), *frames[1:]]

    def _not_its_group(self, request_id: int) -> Message:
        """The fuzzer's own session, asking for what is not its own (or cannot be had)."""
        rng, owned = self.rng, self.owned
        choice = rng.randrange(5)
        if choice == 0:  # ALLOC of an env no worker hosts, or of more envs than fit anywhere
            meta = rng.choice(
                (
                    {"env": f"nope-{rng.randrange(10**6)}", "num_envs": rng.randint(1, 64)},
                    {"env": "echo", "num_envs": rng.randint(10**6, 2**31)},
                )
            )
            return Message(Op.ALLOC, request_id, meta=meta, session=owned.session)
        message = self._valid(request_id, owned.session)
        if message.op is Op.ALLOC:
            return self._replace_request(request_id)
        if message.op in (Op.HELLO, Op.STATUS, Op.PING):
            return message
        op, ids = message.op, message.env_ids
        assert ids is not None
        worker = message.worker
        group = message.group
        if choice == 1:  # its group, ids of no group
            group = owned.group
        elif choice == 2:  # its group and ids, any worker (the broker forwards; it answers)
            group, ids = owned.group, owned.env_ids[: rng.randint(1, len(owned.env_ids))]
            worker = rng.choice([*self.worker_ids, rng.randrange(2**31)])
            if op is Op.CLOSE:  # on the right worker it would close the envs for good
                op = Op.STATE
        elif choice == 3:  # its ids under another group id
            ids = owned.env_ids
            group = owned.group + rng.randint(1, 10**6)
        parts: dict[str, Any] = {}
        if op is Op.STEP:
            parts = {"actions": [{"message": "hi"}] * len(ids)}
        elif op is Op.RESET:
            parts = {"seeds": list(range(len(ids)))}
        return Message(
            op,
            request_id,
            worker,
            ids,
            meta=message.meta,
            parts=parts,
            session=owned.session,
            group=group,
        )

    def _replace_request(self, request_id: int) -> Message:
        """An ALLOC with env ids (move them off a dead worker) of the fuzzer's session: never a
        new group, which would hold slots. Its own ids, which are live, or a random group's."""
        rng, owned = self.rng, self.owned
        if rng.random() < 0.5:
            ids, group = owned.env_ids, owned.group
        else:
            group = rng.randrange(2**62)
            ids = np.arange(group, group + 4, dtype=np.int64)
        meta = {"env": "echo", "num_envs": len(ids)}
        return Message(
            Op.ALLOC, request_id, env_ids=ids, meta=meta, session=owned.session, group=group
        )

    def _bad_payload(self, request_id: int) -> list[Frame]:
        """A request on the fuzzer's own envs, which the broker forwards, with garbage parts."""
        rng = self.rng
        worker, ids = rng.choice(list(self.owned.by_worker().items()))
        op = rng.choice((Op.STEP, Op.STEP, Op.STEP, Op.RESET, Op.RESET, Op.STATE, Op.CREATE))
        n = len(ids)
        parts: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        if op is Op.STEP:
            parts = {"actions": self._garbage_rows(n)}
        elif op is Op.RESET:
            part = rng.choice(("seeds", "kwargs"))
            parts = {part: self._garbage_rows(n)}
        elif op is Op.CREATE:
            meta = {"env": rng.choice(("echo", "nope", "os:system")), "kwargs": {"x": 1}}
        message = Message(
            op,
            request_id,
            worker,
            ids,
            meta=meta,
            parts=parts,
            session=self.owned.session,
            group=self.owned.group,
        )
        if op is Op.STEP and rng.random() < 0.2:  # a raw frame where msgpack is declared
            frames = encode(message)
            return [frames[0], _random_bytes(rng)]
        return encode(message)

    def _garbage_rows(self, n: int) -> Any:
        rng = self.rng
        choice = rng.randrange(8)
        if choice == 0:
            return rng.choice(BAD_VALUES)
        if choice == 1:
            return [rng.choice(BAD_VALUES) for _ in range(n)]
        if choice == 2:
            return [{"message": rng.choice(BAD_VALUES)} for _ in range(n)]
        if choice == 3:
            return [{"message": "x", "extra": 1}] * n
        if choice == 4:
            return [{"message": "x"}] * (n + rng.choice((-1, 1, 100)))
        if choice == 5:
            return np.zeros(n, dtype=rng.choice((np.int64, np.float32, np.uint8)))
        if choice == 6:
            deep: Any = 0
            for _ in range(100):
                deep = [deep]
            return [deep] * n
        return [{"message": "y" * rng.choice((0, 10_000, 200_000))}] * n

    # -------------------------------------------------------------- backend

    def backend(self) -> list[Frame]:
        """One message for the broker's backend: ``[route, header, *payload]``."""
        kind = self.rng.choices(BACKEND_KINDS, (1, 1))[0]
        self.drawn[kind] = self.drawn.get(kind, 0) + 1
        rng = self.rng
        route = b"" if rng.random() < 0.8 else rng.randbytes(rng.randint(1, 8))
        message = rng.choice(
            (
                Message(
                    Op.READY,
                    meta={
                        "envs": [f"fuzz-{rng.randrange(10**6)}"],
                        "capacity": rng.randint(1, 2**31),
                        "name": f"fake-{rng.randrange(10**6)}",
                        "pid": rng.randrange(2**22),
                    },
                ),
                Message(Op.HEARTBEAT),
                Message(Op.BYE),
                Message(Op.REPLY, rng.randrange(1, 2**32)),
                Message(Op.ERROR, meta={"type": "WorkerLost", "message": "fake"}),
            )
        )
        frames = encode(message)
        if kind == "backend garbage":
            if rng.random() < 0.5:
                frames = [_random_bytes(rng) for _ in range(rng.randint(1, 3))]
            else:
                data = bytearray(frames[0])
                for _ in range(rng.randint(1, 4)):
                    data[rng.randrange(len(data))] ^= rng.randint(1, 255)
                frames = [bytes(data)]
        return [route, *frames]
