"""The codec's invariant, as h11 states its own: any frames either decode or raise ProtocolError.

Nothing else may escape ``decode`` / ``decode_header``: the broker feeds them whatever arrives on
a socket and must never crash. The structured strategies include unhashable dtypes and shapes
whose element count overflows int64, two escapes this suite once found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from openenv_zmq.errors import ProtocolError
from openenv_zmq.protocol import (
    DEFAULT_LIMITS,
    Frame,
    Limits,
    Message,
    Op,
    decode,
    decode_header,
    encode,
    pack,
)
from openenv_zmq.protocol.codec import ALLOWED_DTYPES
from openenv_zmq.protocol.schema import HEADER_FIELDS, SCHEMAS
from tests.unit.test_protocol import CONVERSATIONS, as_received, assert_same_message

FUZZ = settings(max_examples=300, deadline=None, database=None)

META_KEYS = sorted({key for schema in SCHEMAS.values() for key in schema.meta})
PART_NAMES = sorted({name for schema in SCHEMAS.values() for name in schema.parts})
OP_VALUES = [int(op) for op in Op]

SMALL_LIMITS = Limits(max_header_bytes=48, max_message_bytes=160)
limits = st.sampled_from([DEFAULT_LIMITS, SMALL_LIMITS])


def check_invariant(frames: Sequence[Frame], limits: Limits = DEFAULT_LIMITS) -> None:
    """Both decoders answer a Message or raise ProtocolError, and they agree on the header."""
    try:
        header: Message | None = decode_header(frames, limits)
    except ProtocolError:
        header = None
    try:
        full: Message | None = decode(frames, limits)
    except ProtocolError:
        full = None
    if header is None:
        assert full is None, "decode accepted what decode_header refused"
        return
    assert isinstance(header, Message)
    assert header.parts == {}
    if full is not None:
        assert isinstance(full, Message)
        assert_same_message(header, replace(full, parts={}))


# -- msgpack-able values, with the protocol's own names mixed in --------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=24),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12)),
    st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 999_999_999)),
)
str_keys = st.sampled_from(sorted(HEADER_FIELDS) + META_KEYS + PART_NAMES) | st.text(max_size=6)
keys = str_keys | st.binary(max_size=6)


def nested(keys: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5)
        ),
        max_leaves=20,
    )


values = nested(keys)
str_keyed_values = nested(str_keys)
payloads = st.lists(st.binary(max_size=48) | values.map(pack), max_size=4)


@FUZZ
@given(frames=st.lists(st.binary(max_size=96), max_size=5), limits=limits)
def test_arbitrary_bytes(frames: list[bytes], limits: Limits) -> None:
    check_invariant(frames, limits)


@FUZZ
@given(
    # int keys pack fine but the unpacker refuses them (strict_map_key): a path worth fuzzing too
    header=st.dictionaries(keys, values, max_size=8)
    | st.dictionaries(st.integers(-3, 3), values, max_size=2),
    payload=payloads,
    limits=limits,
)
def test_arbitrary_header_maps(
    header: dict[Any, Any], payload: list[bytes], limits: Limits
) -> None:
    check_invariant([pack(header), *payload], limits)


# -- values msgpack carries unchanged: no tuples, no NaN, str keys ------------------------------

plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.binary(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


# -- headers one step away from valid, so the checks past the first few get exercised ------------


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` about seven times in eight, else any value: most examples break one rule only."""
    return st.integers(0, 7).flatmap(lambda roll: str_keyed_values if roll == 0 else valid)


DTYPES = st.sampled_from(sorted(ALLOWED_DTYPES)) | str_keyed_values
DIM = st.integers(0, 4) | st.integers(0, 2**20) | st.integers(2**32, 2**39)
descriptors = mostly(
    st.tuples(st.sampled_from(PART_NAMES), st.just("m")).map(list)
    | st.tuples(
        st.sampled_from(PART_NAMES), st.just("a"), DTYPES, mostly(st.lists(DIM, max_size=3))
    ).map(list)
)
meta_values = st.one_of(
    st.integers(-1, 2**64 - 1),
    st.floats(),
    st.text(max_size=8),
    st.lists(st.text(max_size=4), max_size=3),
    st.dictionaries(st.text(max_size=4), scalars, max_size=3),
)
near_valid_headers = st.fixed_dictionaries(
    {
        "v": mostly(st.just(1)),
        "op": mostly(st.sampled_from(OP_VALUES)),
        "w": mostly(st.integers(0, 3)),
        "ids": mostly(st.integers(0, 4).map(lambda n: bytes(8 * n))),
        "pl": mostly(st.lists(descriptors, max_size=4)),
    },
    optional={
        "id": mostly(st.integers(0, 2**64 - 1)),
        "meta": mostly(st.dictionaries(st.sampled_from(META_KEYS), meta_values, max_size=4)),
    },
)
# array frames whose size often matches a small shape: 0..4 elements of 1, 2, 4 or 8 bytes
sized_frames = st.integers(0, 4).flatmap(
    lambda n: st.sampled_from([1, 2, 4, 8]).map(lambda itemsize: bytes(n * itemsize))
)


@FUZZ
@given(
    header=near_valid_headers,
    payload=st.lists(sized_frames | st.binary(max_size=32) | plain.map(pack), max_size=4),
    limits=limits,
)
def test_near_valid_headers(header: dict[str, Any], payload: list[bytes], limits: Limits) -> None:
    check_invariant([pack(header), *payload], limits)


# -- valid messages, generated ------------------------------------------------------------------

env_id_lists = st.lists(st.integers(-(2**63), 2**63 - 1), max_size=6, unique=True)


def batch_arrays(n: int) -> st.SearchStrategy[Any]:
    """Arrays of ``n`` rows, one per env, in any allowed dtype."""
    return hnp.arrays(
        dtype=st.sampled_from(sorted(ALLOWED_DTYPES)),
        shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3).map(
            lambda rest: (n, *rest)
        ),
    )


@st.composite
def step_messages(draw: st.DrawFn) -> Message:
    ids = draw(env_id_lists)
    n = len(ids)
    actions = draw(
        st.lists(st.dictionaries(st.text(max_size=8), plain, max_size=3), min_size=n, max_size=n)
        | batch_arrays(n)
    )
    return Message(
        Op.STEP,
        request_id=draw(st.integers(0, 2**64 - 1)),
        worker=draw(st.integers(0, 2**32)),
        env_ids=np.array(ids, dtype=np.int64),
        parts={"actions": actions},
    )


@st.composite
def reply_messages(draw: st.DrawFn) -> Message:
    ids = draw(env_id_lists)
    n = len(ids)
    flags = hnp.arrays(np.bool_, n)
    errors = st.lists(
        st.tuples(st.sampled_from(ids) if ids else st.just(0), st.text(), st.text(), st.text()).map(
            list
        ),
        max_size=n,
    )
    candidates = {
        "obs": st.lists(st.none() | st.dictionaries(st.text(max_size=8), plain), min_size=n,
                        max_size=n)
        | batch_arrays(n),
        "rew": hnp.arrays(np.float32, n),
        "term": flags,
        "trunc": flags,
        "errors": errors,
        "states": st.lists(st.none() | st.dictionaries(st.text(max_size=8), plain), min_size=n,
                           max_size=n),
        "workers": hnp.arrays(np.int64, n),
    }  # fmt: skip
    names = draw(st.lists(st.sampled_from(sorted(candidates)), unique=True))
    return Message(
        Op.REPLY,
        request_id=draw(st.integers(0, 2**64 - 1)),
        env_ids=np.array(ids, dtype=np.int64),
        parts={name: draw(candidates[name]) for name in names},
    )


valid_messages = step_messages() | reply_messages() | st.sampled_from(list(CONVERSATIONS.values()))


@FUZZ
@given(message=step_messages() | reply_messages())
def test_valid_messages_round_trip(message: Message) -> None:
    frames = as_received(encode(message))
    assert_same_message(decode(frames), message)
    assert_same_message(decode_header(frames), replace(message, parts={}))


# -- valid messages, damaged --------------------------------------------------------------------


@st.composite
def damaged(draw: st.DrawFn) -> list[bytes]:
    frames = [bytearray(frame) for frame in as_received(encode(draw(valid_messages)))]
    for _ in range(draw(st.integers(1, 3))):
        if not frames:
            break
        kind = draw(st.sampled_from(["flip", "truncate", "extend", "insert", "delete", "frames"]))
        if kind == "frames":  # drop, repeat or reorder whole frames
            order = draw(st.lists(st.integers(0, len(frames) - 1), max_size=len(frames) + 2))
            frames = [bytearray(frames[i]) for i in order]
            continue
        frame = frames[draw(st.integers(0, len(frames) - 1))]
        at = draw(st.integers(0, len(frame)))
        if kind == "flip" and at < len(frame):
            frame[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del frame[at:]
        elif kind == "extend":
            frame += draw(st.binary(min_size=1, max_size=16))
        elif kind == "insert":
            frame[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del frame[at : at + draw(st.integers(1, 4))]
    return [bytes(frame) for frame in frames]


@FUZZ
@given(frames=damaged(), limits=limits)
def test_damaged_messages(frames: list[bytes], limits: Limits) -> None:
    check_invariant(frames, limits)


# -- valid messages, cut at every byte (deterministic, as h11 feeds its input byte by byte) -----


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_header_cut_short_anywhere_is_refused(name: str) -> None:
    head, *payload = as_received(encode(CONVERSATIONS[name]))
    for end in range(len(head)):
        for decoder in (decode, decode_header):
            with pytest.raises(ProtocolError):
                decoder([head[:end], *payload])


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_frame_split_anywhere_is_refused(name: str) -> None:
    frames = as_received(encode(CONVERSATIONS[name]))
    for index, frame in enumerate(frames):
        for at in range(len(frame) + 1):
            split = [*frames[:index], frame[:at], frame[at:], *frames[index + 1 :]]
            for decoder in (decode, decode_header):
                with pytest.raises(ProtocolError):
                    decoder(split)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_payload_cut_short_anywhere_is_refused_by_decode(name: str) -> None:
    head, *payload = as_received(encode(CONVERSATIONS[name]))
    for index, frame in enumerate(payload):
        for end in range(len(frame)):
            cut = [head, *payload[:index], frame[:end], *payload[index + 1 :]]
            with pytest.raises(ProtocolError):
                decode(cut)
            check_invariant(cut)
