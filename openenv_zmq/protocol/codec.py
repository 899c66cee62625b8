"""encode(message) -> frames and decode(frames) -> message, with no sockets.

Frame 0 is a msgpack map, the header::

    {"v": 2, "op": Op, "id": request id, "w": worker id, "ids": <int64 env ids, raw bytes>,
     "s": <client session token, 16 bytes>, "g": env group id,
     "meta": {op-specific small fields}, "pl": [[part name, "m"] | [part name, "a", dtype, shape]]}

Each entry of ``pl`` describes one payload frame after the header, in order: ``"m"`` is a msgpack
value, ``"a"`` a numpy array sent as its raw buffer (no per-item encoding, no copy on decode).
Optional header fields are omitted when empty. Anything else (an unknown field, op, version or part,
a wrong type, a size over the limits) raises :class:`ProtocolError` and nothing else.
"""

from __future__ import annotations

import enum
import math
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeAlias

import msgpack
import numpy as np
import numpy.typing as npt

from openenv_zmq.errors import MessageTooLarge, ProtocolError
from openenv_zmq.protocol.ops import Op
from openenv_zmq.protocol.schema import HEADER_FIELDS, SCHEMAS, SESSION_BYTES, OpSchema

PROTOCOL_VERSION = 2
MAX_REQUEST_ID = 2**64 - 1
ALLOWED_DTYPES = frozenset(
    {"|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8"}
)
MAX_ARRAY_DIMS = 8
_OPS: dict[int, Op] = {int(op): op for op in Op}
"""Ops by wire value: ``Op(value)`` goes through the enum machinery, a dict does not."""
ITEM_SIZES = {dtype: np.dtype(dtype).itemsize for dtype in ALLOWED_DTYPES}
"""Bytes per item of each dtype a part may have: ``np.dtype()`` costs a microsecond a call."""

EnvIds = npt.NDArray[np.int64]
Frame: TypeAlias = Any
"""bytes, memoryview, zmq.Frame: anything exposing the buffer protocol (zmq's stubs say none)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits enforced on decode, and on encode when a sender passes them; a message over
    them raises :class:`MessageTooLarge`."""

    max_header_bytes: int = 16 * 2**20
    max_message_bytes: int = 256 * 2**20

    @property
    def max_env_ids(self) -> int:
        """The most env ids one message can name: they travel in its header, 8 bytes each, next
        to fields that take far less than :data:`HEADER_FIELDS_ROOM`."""
        return max(0, self.max_header_bytes - HEADER_FIELDS_ROOM) // 8


HEADER_FIELDS_ROOM = 2**16
"""Header bytes kept for everything but the env ids (version, op, ids, part descriptors, meta)."""
DEFAULT_LIMITS = Limits()


class ArraySpec(NamedTuple):
    """An array part's dtype and shape. A named tuple: one is built per array part per decode,
    and a tuple builds in a third of a frozen dataclass's time."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Message:
    """One protocol message. ``parts`` maps part name to a numpy array or a msgpack-able value."""

    op: Op
    request_id: int = 0
    worker: int | None = None
    env_ids: EnvIds | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, Any] = field(default_factory=dict)
    session: bytes | None = None
    """The client session a request acts for (the token the broker's HELLO answer gave)."""
    group: int | None = None
    """The env group a request's env ids belong to (the id the broker's ALLOC answer gave)."""


@dataclass(frozen=True, slots=True)
class Repeated:
    """A part that is a list of ``count`` times the same ``value``: it is packed once and the
    bytes repeated, and its size is known before the list is built (one reset kwargs dict for
    64 envs costs one encoding, and fails the size check without 64 copies). It decodes as a
    plain list."""

    value: Any
    count: int


def _pack_default(obj: Any) -> Any:
    # numpy values inside structured payloads (an env returning np.float32 reward, say)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, enum.Enum):  # an action or observation field holding an enum
        return obj.value
    raise TypeError(f"cannot encode {type(obj).__name__} in a msgpack payload")


class _Packers(threading.local):
    """One packer per thread, built once: ``msgpack.packb`` builds one per call. Not one for all
    threads: ``Packer.pack`` calls back into Python (``default``), so two threads could interleave
    in its buffer (a worker encodes replies while its keep-alive thread sends heartbeats)."""

    def __init__(self) -> None:
        self.packer = msgpack.Packer(use_bin_type=True, default=_pack_default)


_packers = _Packers()


def pack(value: Any) -> bytes:
    """msgpack-encode a structured value (the one packer configuration used everywhere)."""
    try:
        return _packers.packer.pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        # The packer empties its buffer when packing fails: the next pack starts clean.
        raise ProtocolError(f"payload cannot be encoded: {exc}") from exc


def unpack(frame: Frame, what: str) -> Any:
    """msgpack-decode one frame; any failure is a :class:`ProtocolError` naming ``what``."""
    try:
        return msgpack.unpackb(frame, raw=False)
    except Exception as exc:  # msgpack raises a dozen unrelated types on garbage
        raise ProtocolError(f"{what} is not valid msgpack: {type(exc).__name__}: {exc}") from exc


def _nbytes(frame: Frame) -> int:
    # bytes (what senders build, and copied receives) answer len() without a memoryview.
    return len(frame) if type(frame) is bytes else memoryview(frame).nbytes


def _check_size(what: str, size: int, limit: int) -> None:
    if size > limit:
        raise MessageTooLarge(f"{what} of {size} bytes is over the limit of {limit}")


PartSpecs = tuple[tuple[str, ArraySpec | None], ...]
"""Each payload frame's part name and array spec (``None`` for a msgpack part), in order."""


def _check_header(header: dict[str, Any]) -> tuple[Op, PartSpecs]:
    """Validate a decoded header map; return its op and part specs."""
    op, schema = _check_fields(header)
    return op, _check_part_specs(op, header.get("pl", []), schema.parts)


def _check_fields(header: dict[str, Any]) -> tuple[Op, OpSchema]:
    """Validate every header field but the part descriptors; return the op and its schema."""
    if not HEADER_FIELDS.issuperset(header):
        unknown = set(header) - HEADER_FIELDS
        raise ProtocolError(f"unknown header field(s): {', '.join(sorted(map(str, unknown)))}")
    version = header.get("v")
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise ProtocolError(
            f"unsupported protocol version {version!r} (this side speaks {PROTOCOL_VERSION})"
        )
    raw_op = header.get("op")
    op = _OPS.get(raw_op) if type(raw_op) is int else None
    if op is None:
        raise ProtocolError(f"unknown op {raw_op!r}")
    schema = SCHEMAS[op]
    request_id = header.get("id", 0)
    if type(request_id) is not int or not 0 <= request_id <= MAX_REQUEST_ID:
        raise ProtocolError(f"request id must be an unsigned 64-bit int, got {request_id!r}")
    worker = header.get("w")
    if worker is None:
        if schema.needs_worker:
            raise ProtocolError(f"{op.name} needs a worker id ('w')")
    elif type(worker) is not int or worker < 0:
        raise ProtocolError(f"worker id must be a non-negative int, got {worker!r}")
    ids = header.get("ids")
    if ids is None:
        if schema.needs_env_ids:
            raise ProtocolError(f"{op.name} needs env ids ('ids')")
    elif not isinstance(ids, bytes | memoryview) or len(ids) % 8:
        raise ProtocolError("env ids ('ids') must be raw int64 bytes")
    session = header.get("s")
    if session is not None and (type(session) is not bytes or len(session) != SESSION_BYTES):
        raise ProtocolError(f"a client session ('s') is {SESSION_BYTES} bytes")
    group = header.get("g")
    if group is not None and (type(group) is not int or not 0 <= group <= MAX_REQUEST_ID):
        raise ProtocolError(f"group id must be an unsigned 64-bit int, got {group!r}")
    meta = header.get("meta", {})
    if type(meta) is not dict:
        raise ProtocolError(f"'meta' must be a map, got {type(meta).__name__}")
    for key, value in meta.items():
        rule = schema.meta.get(key)
        if rule is None:
            raise ProtocolError(f"unknown meta field {key!r} for {op.name}")
        if not rule[0](value):
            raise ProtocolError(f"meta field {key!r} of {op.name} has a wrong type or value")
    for key, (_, required) in schema.meta.items():
        if required and key not in meta:
            raise ProtocolError(f"{op.name} needs meta field {key!r}")
    return op, schema


def _check_part_specs(op: Op, raw: Any, allowed: frozenset[str]) -> PartSpecs:
    if type(raw) is not list:
        raise ProtocolError("'pl' must be a list of part descriptors")
    specs: list[tuple[str, ArraySpec | None]] = []
    seen: set[str] = set()
    for entry in raw:
        if type(entry) is not list or not entry or type(entry[0]) is not str:
            raise ProtocolError(f"malformed part descriptor {entry!r}")
        name = entry[0]
        if name not in allowed:
            raise ProtocolError(f"{op.name} carries no part named {name!r}")
        if name in seen:
            raise ProtocolError(f"part {name!r} appears twice")
        seen.add(name)
        if len(entry) == 2 and entry[1] == "m":
            specs.append((name, None))
            continue
        if len(entry) != 4 or entry[1] != "a":
            raise ProtocolError(f"malformed part descriptor {entry!r}")
        dtype, shape = entry[2], entry[3]
        if type(dtype) is not str or dtype not in ALLOWED_DTYPES:
            raise ProtocolError(f"part {name!r}: unsupported dtype {dtype!r}")
        if type(shape) is not list or len(shape) > MAX_ARRAY_DIMS:
            raise ProtocolError(f"part {name!r}: malformed shape {shape!r}")
        for d in shape:
            if type(d) is not int or not 0 <= d < 2**40:
                raise ProtocolError(f"part {name!r}: malformed shape {shape!r}")
        specs.append((name, ArraySpec(dtype, tuple(shape))))
    return tuple(specs)


def _decode(frames: Sequence[Frame], limits: Limits) -> tuple[dict[str, Any], Op, PartSpecs]:
    """Check sizes, header and payload frame sizes; return the header map, op and part specs."""
    if not frames:
        raise ProtocolError("empty message")
    header_size = _nbytes(frames[0])
    _check_size("header", header_size, limits.max_header_bytes)
    sizes = [_nbytes(f) for f in frames[1:]]
    _check_size("message", header_size + sum(sizes), limits.max_message_bytes)
    header = unpack(frames[0], "header")
    if type(header) is not dict:
        raise ProtocolError(f"header must be a msgpack map, got {type(header).__name__}")
    op, specs = _check_header(header)
    if len(specs) != len(frames) - 1:
        raise ProtocolError(
            f"header describes {len(specs)} payload frame(s) but {len(frames) - 1} arrived"
        )
    for (name, spec), size in zip(specs, sizes, strict=True):
        if spec is not None:
            expected = math.prod(spec.shape) * ITEM_SIZES[spec.dtype]
            if size != expected:
                raise ProtocolError(
                    f"part {name!r}: {size} bytes for {spec.dtype}{list(spec.shape)}"
                    f" which needs {expected}"
                )
    return header, op, specs


def _message(header: dict[str, Any], op: Op, parts: dict[str, Any]) -> Message:
    ids = header.get("ids")
    return Message(
        op=op,
        request_id=header.get("id", 0),
        worker=header.get("w"),
        env_ids=None if ids is None else np.frombuffer(ids, dtype="<i8"),
        meta=header.get("meta", {}),
        parts=parts,
        session=header.get("s"),
        group=header.get("g"),
    )


def readable_request_id(frames: Sequence[Frame], limits: Limits = DEFAULT_LIMITS) -> int:
    """The request id of frames that failed to decode, if their header can be read at all; else 0.

    Lets an error answer name the request it refuses, so the sender is not left waiting.
    """
    if not frames or _nbytes(frames[0]) > limits.max_header_bytes:
        return 0
    try:
        header = unpack(frames[0], "header")
    except ProtocolError:
        return 0
    request_id = header.get("id", 0) if type(header) is dict else 0
    return request_id if type(request_id) is int and 0 <= request_id <= MAX_REQUEST_ID else 0


def decode_header(frames: Sequence[Frame], limits: Limits = DEFAULT_LIMITS) -> Message:
    """Validate a whole message but decode only frame 0; ``parts`` of the result stay empty.

    This is what the broker calls: payload frames are checked for count and size, never read.
    Raises :class:`ProtocolError` (or :class:`MessageTooLarge`) and nothing else.
    """
    header, op, _ = _decode(frames, limits)
    return _message(header, op, {})


def decode(frames: Sequence[Frame], limits: Limits = DEFAULT_LIMITS) -> Message:
    """Decode a whole message. Arrays are views of their frames (no copy): writable for
    received zmq frames, read-only for ``bytes``.

    Raises :class:`ProtocolError` (or :class:`MessageTooLarge`) and nothing else.
    """
    header, op, specs = _decode(frames, limits)
    parts: dict[str, Any] = {}
    for (name, spec), frame in zip(specs, frames[1:], strict=True):
        if spec is None:
            parts[name] = unpack(frame, f"part {name!r}")
        else:
            parts[name] = np.frombuffer(frame, dtype=spec.dtype).reshape(spec.shape)
    return _message(header, op, parts)


def _pack_repeated(part: Repeated, size: int, limit: int) -> bytes:
    """``part`` as a msgpack list; :class:`MessageTooLarge` before the copies are made when they
    would take a message already ``size`` bytes long over ``limit``."""
    once = pack(part.value)
    array_header = _packers.packer.pack_array_header(part.count)
    _check_size("message", size + len(array_header) + len(once) * part.count, limit)
    return array_header + once * part.count


def encode(message: Message, limits: Limits | None = None) -> list[Frame]:
    """Encode a message into frames: the header, then one frame per part.

    Arrays travel as their own buffers (a copy only if not C-contiguous little-endian). A sender
    passes its ``limits`` to check sizes before anything is sent: parts are measured as they are
    packed, so a message over the limit fails with :class:`MessageTooLarge` (naming a size
    reached and the limit) having built at most one part past it.
    Raises :class:`ProtocolError` if the message breaks the schema or a value cannot be encoded.
    """
    limit = sys.maxsize if limits is None else limits.max_message_bytes
    size = 0
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "op": int(message.op)}
    if message.request_id:
        header["id"] = message.request_id
    if message.worker is not None:
        header["w"] = message.worker
    if message.env_ids is not None:
        header["ids"] = np.ascontiguousarray(message.env_ids, dtype="<i8").tobytes()
    if message.session is not None:
        header["s"] = message.session
    if message.group is not None:
        header["g"] = message.group
    if message.meta:
        header["meta"] = message.meta
    op, schema = _check_fields(header)
    payload: list[Frame] = []
    if message.parts:
        descriptors: list[list[Any]] = []
        for name, value in message.parts.items():
            # The descriptors are built here, so only what a caller chose is checked: the part
            # names, dtypes and shapes (dict keys cannot repeat).
            if name not in schema.parts:
                raise ProtocolError(f"{op.name} carries no part named {name!r}")
            if isinstance(value, np.ndarray):
                dtype = value.dtype.str
                if dtype not in ALLOWED_DTYPES or not value.flags.c_contiguous:
                    value = np.asarray(value, dtype=value.dtype.newbyteorder("<"), order="C")
                    dtype = value.dtype.str
                    if dtype not in ALLOWED_DTYPES:
                        raise ProtocolError(f"part {name!r}: unsupported dtype {value.dtype}")
                shape = list(value.shape)
                # An array holding items has every dimension within its size; only an empty
                # one can name a dimension past what the wire allows.
                if len(shape) > MAX_ARRAY_DIMS or (not value.size and max(shape) >= 2**40):
                    raise ProtocolError(f"part {name!r}: malformed shape {shape!r}")
                descriptors.append([name, "a", dtype, shape])
                # memoryview(), not .data: an ndarray subclass (a masked array) may hide .data
                payload.append(memoryview(value).cast("B") if value.size else b"")
                size += value.nbytes
            else:
                descriptors.append([name, "m"])
                packed = (
                    _pack_repeated(value, size, limit)
                    if isinstance(value, Repeated)
                    else pack(value)
                )
                payload.append(packed)
                size += len(packed)
            _check_size("message", size, limit)
        header["pl"] = descriptors
    frame0 = pack(header)
    if limits is not None:
        _check_size("header", len(frame0), limits.max_header_bytes)
    _check_size("message", size + len(frame0), limit)
    return [frame0, *payload]
