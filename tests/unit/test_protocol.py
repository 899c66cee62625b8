"""The codec, one message at a time: every conversation of the protocol docstring round-trips,
arrays cross without copies, and every schema violation is refused with a message that says why."""

from __future__ import annotations

import sys
import threading
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

import msgpack
import numpy as np
import pytest

from openenv_zmq.errors import MessageTooLarge, ProtocolError
from openenv_zmq.protocol import (
    ANSWER_OPS,
    BROKER_OPS,
    CONTROL_OPS,
    PROTOCOL_VERSION,
    REQUEST_OPS,
    WORKER_OPS,
    Frame,
    Limits,
    Message,
    Op,
    Repeated,
    decode,
    decode_header,
    encode,
    error_message,
    pack,
    unpack,
)
from openenv_zmq.protocol.codec import ALLOWED_DTYPES

Decoder = Callable[..., Message]

# Unsorted, sparse and beyond 32 bits: env ids are opaque int64 handed out by the broker.
IDS = np.array([7, 3, 2**40 + 1, 0], dtype=np.int64)
TRACEBACK = (
    'Traceback (most recent call last):\n  File "env.py", line 3, in step\nValueError: boom\n'
)


SESSION = bytes(range(16))


def routed(op: Op, request_id: int, **fields: Any) -> Message:
    """A client -> worker request as the client sends it: worker id, env ids, its session and
    its group filled in."""
    return Message(
        op, request_id=request_id, worker=1, env_ids=IDS, session=SESSION, group=2**40, **fields
    )


CONVERSATIONS: dict[str, Message] = {
    # client <-> broker
    "hello": Message(Op.HELLO, request_id=1),
    "hello-reply": Message(
        Op.REPLY, request_id=1, meta={"session": SESSION, "lease_s": 300.0, "heartbeat_s": 1}
    ),
    "alloc": Message(Op.ALLOC, request_id=1, meta={"env": "echo", "num_envs": 4}, session=SESSION),
    "alloc-reply": Message(
        Op.REPLY,
        request_id=1,
        env_ids=IDS,
        parts={"workers": np.array([0, 0, 1, 1], dtype=np.int64)},
        group=7,
    ),
    "alloc-refused": error_message(1, "NoWorkerAvailable", "no live worker hosts 'echo'"),
    "status": Message(Op.STATUS, request_id=2),
    "status-reply": Message(
        Op.REPLY,
        request_id=2,
        meta={"status": {"workers": [{"id": 0, "envs": ["echo"], "load": 2}], "in_flight": 0}},
    ),
    "ping": Message(Op.PING, request_id=3),
    "ping-renewing": Message(Op.PING, request_id=3, session=SESSION),
    "ping-reply": Message(Op.REPLY, request_id=3),
    # client <-> worker, routed by the broker
    "create": routed(Op.CREATE, 4, meta={"env": "echo", "kwargs": {"max_len": 32}}),
    "create-no-kwargs": routed(Op.CREATE, 4, meta={"env": "echo_env.server:EchoEnvironment"}),
    "create-reply": Message(Op.REPLY, request_id=4, env_ids=IDS, parts={"errors": []}),
    "reset": routed(
        Op.RESET,
        5,
        parts={
            "seeds": [0, 1, None, 2**31],
            "kwargs": [{}, {"episode_id": "ep-1"}, {}, {"difficulty": 0.5, "tags": ["a", "b"]}],
        },
    ),
    "reset-bare": routed(Op.RESET, 5),
    "step": routed(
        Op.STEP,
        6,
        parts={
            "actions": [
                {"message": "Hello"},
                {"message": ""},
                {"message": "héllo wörld", "metadata": {"turn": 3}},
                {"message": "x" * 1000},
            ]
        },
    ),
    "step-array": routed(
        Op.STEP, 6, parts={"actions": np.arange(8, dtype=np.float32).reshape(4, 2) / 7}
    ),
    "step-reply": Message(
        Op.REPLY,
        request_id=6,
        env_ids=IDS,
        parts={
            "obs": [
                {"echoed_message": "Hello", "message_length": 5, "done": False, "reward": 0.5},
                {"echoed_message": "", "message_length": 0, "done": False, "reward": 0.0},
                None,
                {"echoed_message": "x" * 1000, "message_length": 1000},
            ],
            "rew": np.array([0.5, 0.0, 0.0, 100.0], dtype=np.float32),
            "term": np.array([False, False, False, True]),
            "trunc": np.array([False, True, False, False]),
            "errors": [[int(IDS[2]), "EnvExecutionError", "boom", TRACEBACK]],
        },
    ),
    "step-reply-array": Message(
        Op.REPLY,
        request_id=6,
        env_ids=IDS,
        parts={
            "obs": np.linspace(-1, 1, 4 * 3 * 2, dtype=np.float64).reshape(4, 3, 2),
            "rew": np.ones(4, dtype=np.float32),
            "term": np.zeros(4, dtype=np.bool_),
            "trunc": np.zeros(4, dtype=np.bool_),
            "errors": [],
        },
    ),
    "state": routed(Op.STATE, 7),
    "state-reply": Message(
        Op.REPLY,
        request_id=7,
        env_ids=IDS,
        parts={
            "states": [
                {"episode_id": "392adbe3", "step_count": 1},
                {"episode_id": None, "step_count": 0, "last_exit_code": 1},
                None,
                {"episode_id": "e", "step_count": 2**40},
            ],
            "errors": [[int(IDS[2]), "NeedsReset", "step() before reset()", ""]],
        },
    ),
    "close": routed(Op.CLOSE, 8),
    "close-reply": Message(Op.REPLY, request_id=8, env_ids=IDS, parts={"errors": []}),
    "worker-lost": error_message(
        2**64 - 1, "WorkerLost", "worker 1 died", env_ids=IDS, traceback=TRACEBACK
    ),
    # worker <-> broker control
    "ready": Message(
        Op.READY, meta={"envs": ["echo", "coding"], "capacity": 1024, "name": "w-0", "pid": 4242}
    ),
    "welcome": Message(Op.WELCOME, meta={"worker": 0, "heartbeat": 0.5}),
    "welcome-int-heartbeat": Message(Op.WELCOME, meta={"worker": 3, "heartbeat": 2}),
    "heartbeat": Message(Op.HEARTBEAT),
    "disconnect": Message(Op.DISCONNECT, meta={"reason": "unknown worker, send READY again"}),
    "bye": Message(Op.BYE),
    "drain": Message(Op.DRAIN),
}


def assert_same_message(got: Message, want: Message) -> None:
    """Field by field; arrays must match bit for bit, in dtype and in shape."""
    assert got.op is want.op
    assert got.request_id == want.request_id
    assert got.worker == want.worker
    if want.env_ids is None:
        assert got.env_ids is None
    else:
        assert got.env_ids is not None
        assert got.env_ids.dtype == np.int64
        assert got.env_ids.tolist() == want.env_ids.tolist()
    assert got.meta == want.meta
    assert (got.session, got.group) == (want.session, want.group)
    assert list(got.parts) == list(want.parts)
    for name, value in want.parts.items():
        if isinstance(value, np.ndarray):
            part = got.parts[name]
            assert isinstance(part, np.ndarray), name
            assert part.dtype == value.dtype.newbyteorder("<"), name
            assert part.shape == value.shape, name
            assert part.tobytes() == np.ascontiguousarray(value, dtype=part.dtype).tobytes(), name
        else:
            assert got.parts[name] == value, name


def as_received(frames: Sequence[Frame]) -> list[bytes]:
    """Frames as a socket hands them over: independent byte strings."""
    return [bytes(frame) for frame in frames]


def frames_of(header: dict[Any, Any], *payload: bytes) -> list[bytes]:
    """Hand-built frames, for headers ``encode`` would never produce."""
    return [pack(header), *payload]


def test_conversations_cover_every_op() -> None:
    assert {message.op for message in CONVERSATIONS.values()} == set(Op)


def test_op_groups_partition_the_ops() -> None:
    assert REQUEST_OPS == BROKER_OPS | WORKER_OPS
    assert not BROKER_OPS & WORKER_OPS
    groups = (REQUEST_OPS, ANSWER_OPS, CONTROL_OPS)
    assert sum(len(group) for group in groups) == len(Op)
    assert set().union(*groups) == set(Op)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_round_trip(name: str) -> None:
    message = CONVERSATIONS[name]
    assert_same_message(decode(as_received(encode(message))), message)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_decode_header_reads_frame_zero_only(name: str) -> None:
    message = CONVERSATIONS[name]
    got = decode_header(as_received(encode(message)))
    assert got.parts == {}
    assert_same_message(got, replace(message, parts={}))


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_one_frame_per_part_after_the_header(name: str) -> None:
    message = CONVERSATIONS[name]
    frames = encode(message)
    assert len(frames) == 1 + len(message.parts)
    header = unpack(frames[0], "header")
    assert header["v"] == PROTOCOL_VERSION
    assert [entry[0] for entry in header.get("pl", [])] == list(message.parts)


def test_empty_optional_fields_are_left_out_of_the_header() -> None:
    assert unpack(encode(Message(Op.HEARTBEAT))[0], "header") == {
        "v": PROTOCOL_VERSION,
        "op": int(Op.HEARTBEAT),
    }


def test_any_buffer_is_a_frame() -> None:
    message = CONVERSATIONS["step-reply-array"]
    frames = as_received(encode(message))
    assert_same_message(decode([memoryview(f) for f in frames]), message)
    assert_same_message(decode([bytearray(f) for f in frames]), message)


# -- arrays ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", sorted(ALLOWED_DTYPES))
@pytest.mark.parametrize("shape", [(0,), (4,), (4, 0), (4, 3, 2), (1,) * 8], ids=str)
def test_array_round_trips_with_dtype_and_shape(dtype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    array = np.asarray(rng.integers(0, 100, size=shape)).astype(dtype)
    message = Message(Op.REPLY, env_ids=IDS, parts={"obs": array})
    got = decode(as_received(encode(message))).parts["obs"]
    assert got.dtype == np.dtype(dtype)
    assert got.shape == shape
    assert np.array_equal(got, array)


def test_zero_dimensional_array_keeps_its_shape() -> None:
    message = Message(Op.REPLY, env_ids=IDS[:1], parts={"rew": np.array(0.5, dtype=np.float32)})
    assert decode(as_received(encode(message))).parts["rew"].shape == ()


def test_decoded_array_is_a_view_of_its_frame() -> None:
    frames = as_received(encode(CONVERSATIONS["step-array"]))
    actions = decode(frames).parts["actions"]
    assert np.shares_memory(actions, np.frombuffer(frames[1], dtype=np.uint8))
    assert not actions.flags.writeable


def test_contiguous_array_is_encoded_without_a_copy() -> None:
    array = np.arange(12, dtype=np.float32).reshape(4, 3)
    frames = encode(Message(Op.STEP, worker=0, env_ids=IDS, parts={"actions": array}))
    assert np.shares_memory(np.frombuffer(memoryview(frames[1]), dtype=np.uint8), array)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2],
        np.arange(12, dtype=np.float64).reshape(3, 4).T,
        np.arange(4, dtype=">f4"),
        np.arange(4, dtype=">i8").reshape(2, 2)[::-1],
        np.ma.masked_array(np.arange(4, dtype=np.int64), mask=[False, True, False, False]),
        np.zeros((), np.float32),
    ],
    ids=["strided", "fortran", "big-endian", "big-endian-reversed", "masked", "0-d"],
)
def test_awkward_arrays_arrive_as_little_endian_copies(array: np.ndarray) -> None:
    message = Message(
        Op.STEP, worker=0, env_ids=IDS[: max(array.size, 1)], parts={"actions": array}
    )
    got = decode(as_received(encode(message))).parts["actions"]
    assert got.dtype == array.dtype.newbyteorder("<")
    assert got.shape == array.shape
    assert np.array_equal(got, np.asarray(array))  # a masked array's data, as np.asarray has it


def test_an_empty_array_naming_a_dimension_past_the_wire_is_refused() -> None:
    empty = np.zeros((0, 2**40), np.uint8)
    with pytest.raises(ProtocolError, match="malformed shape"):
        encode(Message(Op.STEP, worker=0, env_ids=IDS[:0], parts={"actions": empty}))
    got = decode(
        encode(Message(Op.STEP, worker=0, env_ids=IDS[:0], parts={"actions": empty[:, :3]}))
    )
    assert got.parts["actions"].shape == (0, 3)


def test_numpy_values_inside_structured_parts_become_plain_values() -> None:
    message = Message(
        Op.REPLY,
        env_ids=IDS[:1],
        parts={
            "obs": [
                {
                    "score": np.float32(0.5),
                    "count": np.int64(3),
                    "ok": np.bool_(True),
                    "grid": np.eye(2, dtype=np.int8),
                }
            ],
            "errors": [],
        },
    )
    obs = decode(as_received(encode(message))).parts["obs"]
    assert obs == [{"score": 0.5, "count": 3, "ok": True, "grid": [[1, 0], [0, 1]]}]
    assert [type(v) for v in obs[0].values()] == [float, int, bool, list]


# -- decode_header leaves payloads alone --------------------------------------------------------


def test_decode_header_does_not_read_payloads() -> None:
    header = {"v": 2, "op": int(Op.STEP), "w": 0, "ids": IDS.tobytes(), "pl": [["actions", "m"]]}
    frames = frames_of(header, b"\xc1 this is not msgpack")
    got = decode_header(frames)
    assert (got.op, got.worker, got.parts) == (Op.STEP, 0, {})
    with pytest.raises(ProtocolError, match=r"part 'actions' is not valid msgpack"):
        decode(frames)


def test_decode_header_still_checks_payload_sizes() -> None:
    header = {
        "v": 2, "op": int(Op.STEP), "w": 0, "ids": IDS.tobytes(),
        "pl": [["actions", "a", "<f4", [4, 2]]],
    }  # fmt: skip
    with pytest.raises(ProtocolError, match=r"31 bytes for <f4\[4, 2\] which needs 32"):
        decode_header(frames_of(header, bytes(31)))


# -- refusals ------------------------------------------------------------------------------------

STEP_HEADER: dict[str, Any] = {"v": 2, "op": int(Op.STEP), "id": 9, "w": 0, "ids": IDS.tobytes()}


def header(**changes: Any) -> dict[str, Any]:
    """``STEP_HEADER`` with fields replaced; a value of ``...`` removes the field."""
    result = {**STEP_HEADER, **changes}
    return {k: v for k, v in result.items() if v is not ...}


def alloc(**meta: Any) -> dict[str, Any]:
    return {"v": 2, "op": int(Op.ALLOC), "meta": meta}


def control(op: Op, **meta: Any) -> dict[str, Any]:
    return {"v": 2, "op": int(op), "meta": meta}


def arrays(*descriptors: list[Any]) -> dict[str, Any]:
    return header(pl=list(descriptors))


REFUSED: dict[str, tuple[list[bytes], str]] = {
    "empty": ([], r"empty message"),
    "not-msgpack": ([b"\xc1"], r"header is not valid msgpack"),
    "trailing-bytes": ([pack(STEP_HEADER) + b"\x00"], r"header is not valid msgpack"),
    "header-list": ([pack([1, int(Op.STEP)])], r"header must be a msgpack map, got list"),
    "header-int": ([pack(1)], r"header must be a msgpack map, got int"),
    "version-1": (frames_of(header(v=1)), r"unsupported protocol version 1 \(this side speaks 2\)"),
    "version-3": (frames_of(header(v=3)), r"unsupported protocol version 3"),
    "version-0": (frames_of(header(v=0)), r"unsupported protocol version 0"),
    "version-true": (frames_of(header(v=True)), r"unsupported protocol version True"),
    "version-float": (frames_of(header(v=1.0)), r"unsupported protocol version 1\.0"),
    "version-missing": (frames_of(header(v=...)), r"unsupported protocol version None"),
    "op-unknown": (frames_of(header(op=99)), r"unknown op 99"),
    "op-name": (frames_of(header(op="STEP")), r"unknown op 'STEP'"),
    "op-bool": (frames_of(header(op=True)), r"unknown op True"),
    "op-missing": (frames_of(header(op=...)), r"unknown op None"),
    "field-unknown": (frames_of(header(trace="x")), r"unknown header field\(s\): trace$"),
    "session-short": (frames_of(header(s=b"x" * 8)), r"client session \('s'\) is 16 bytes"),
    "session-int": (frames_of(header(s=16)), r"client session \('s'\) is 16 bytes"),
    "group-str": (frames_of(header(g="7")), r"group id must be an unsigned 64-bit int"),
    "fields-unknown": (
        frames_of(header(zz=1, aa=2)),
        r"unknown header field\(s\): aa, zz$",
    ),
    "field-bytes-key": (frames_of({**STEP_HEADER, b"v": 2}), r"unknown header field\(s\): b'v'"),
    "id-negative": (frames_of(header(id=-1)), r"request id must be an unsigned 64-bit int, got -1"),
    "id-str": (frames_of(header(id="9")), r"request id must be an unsigned 64-bit int, got '9'"),
    "id-bool": (frames_of(header(id=True)), r"request id must be an unsigned 64-bit int"),
    "worker-missing": (frames_of(header(w=...)), r"STEP needs a worker id \('w'\)"),
    "worker-negative": (frames_of(header(w=-1)), r"worker id must be a non-negative int, got -1"),
    "worker-str": (frames_of(header(w="0")), r"worker id must be a non-negative int, got '0'"),
    "ids-missing": (frames_of(header(ids=...)), r"STEP needs env ids \('ids'\)"),
    "ids-7-bytes": (frames_of(header(ids=bytes(7))), r"env ids \('ids'\) must be raw int64 bytes"),
    "ids-list": (frames_of(header(ids=[1, 2])), r"env ids \('ids'\) must be raw int64 bytes"),
    "ids-str": (frames_of(header(ids="12345678")), r"env ids \('ids'\) must be raw int64 bytes"),
    "close-no-ids": (
        frames_of({"v": 2, "op": int(Op.CLOSE), "w": 0}),
        r"CLOSE needs env ids \('ids'\)",
    ),
    "create-no-worker": (
        frames_of({"v": 2, "op": int(Op.CREATE), "ids": IDS.tobytes(), "meta": {"env": "echo"}}),
        r"CREATE needs a worker id \('w'\)",
    ),
    "meta-list": (frames_of(header(meta=[1])), r"'meta' must be a map, got list"),
    "meta-unknown": (
        frames_of(alloc(env="echo", num_envs=1, colour="red")),
        r"unknown meta field 'colour' for ALLOC",
    ),
    "meta-on-step": (frames_of(header(meta={"env": "echo"})), r"unknown meta field 'env' for STEP"),
    "meta-missing": (frames_of(alloc(env="echo")), r"ALLOC needs meta field 'num_envs'"),
    "meta-absent": (
        frames_of({"v": 2, "op": int(Op.ERROR)}),
        r"ERROR needs meta field '(type|message)'",
    ),
    "meta-str-for-int": (
        frames_of(alloc(env="echo", num_envs="4")),
        r"meta field 'num_envs' of ALLOC has a wrong type or value",
    ),
    "meta-bool-for-int": (
        frames_of(alloc(env="echo", num_envs=True)),
        r"meta field 'num_envs' of ALLOC has a wrong type or value",
    ),
    "meta-zero-envs": (
        frames_of(alloc(env="echo", num_envs=0)),
        r"meta field 'num_envs' of ALLOC has a wrong type or value",
    ),
    "meta-float-for-int": (
        frames_of(alloc(env="echo", num_envs=4.0)),
        r"meta field 'num_envs' of ALLOC has a wrong type or value",
    ),
    "meta-bytes-for-str": (
        frames_of(alloc(env=b"echo", num_envs=4)),
        r"meta field 'env' of ALLOC has a wrong type or value",
    ),
    "meta-bool-pid": (
        frames_of(control(Op.READY, envs=["echo"], capacity=1, name="w", pid=False)),
        r"meta field 'pid' of READY has a wrong type or value",
    ),
    "meta-envs-not-str": (
        frames_of(control(Op.READY, envs=["echo", 1], capacity=1, name="w", pid=1)),
        r"meta field 'envs' of READY has a wrong type or value",
    ),
    "meta-bool-heartbeat": (
        frames_of(control(Op.WELCOME, worker=0, heartbeat=True)),
        r"meta field 'heartbeat' of WELCOME has a wrong type or value",
    ),
    "meta-kwargs-list": (
        frames_of(
            {
                "v": 2,
                "op": int(Op.CREATE),
                "w": 0,
                "ids": IDS.tobytes(),
                "meta": {"env": "echo", "kwargs": [1]},
            }
        ),
        r"meta field 'kwargs' of CREATE has a wrong type or value",
    ),
    "meta-reason-missing": (
        frames_of(control(Op.DISCONNECT)),
        r"DISCONNECT needs meta field 'reason'",
    ),
    "pl-not-list": (frames_of(header(pl={"actions": "m"})), r"'pl' must be a list"),
    "part-not-allowed": (
        frames_of(arrays(["obs", "m"]), pack([])),
        r"STEP carries no part named 'obs'",
    ),
    "part-on-state": (
        frames_of(header(op=int(Op.STATE), pl=[["actions", "m"]]), pack([])),
        r"STATE carries no part named 'actions'",
    ),
    "part-twice": (
        frames_of(arrays(["actions", "m"], ["actions", "m"]), pack([]), pack([])),
        r"part 'actions' appears twice",
    ),
    "descriptor-str": (frames_of(header(pl=["actions"]), pack([])), r"malformed part descriptor"),
    "descriptor-empty": (frames_of(arrays([]), pack([])), r"malformed part descriptor \[\]"),
    "descriptor-name-int": (frames_of(arrays([1, "m"]), pack([])), r"malformed part descriptor"),
    "descriptor-kind": (
        frames_of(arrays(["actions", "x"]), pack([])),
        r"malformed part descriptor \['actions', 'x'\]",
    ),
    "descriptor-no-shape": (
        frames_of(arrays(["actions", "a", "<f4"]), bytes(4)),
        r"malformed part descriptor",
    ),
    "dtype-complex": (
        frames_of(arrays(["actions", "a", "<c8", [1]]), bytes(8)),
        r"part 'actions': unsupported dtype '<c8'",
    ),
    "dtype-object": (
        frames_of(arrays(["actions", "a", "|O", [1]]), bytes(8)),
        r"part 'actions': unsupported dtype '\|O'",
    ),
    "dtype-big-endian": (
        frames_of(arrays(["actions", "a", ">f4", [1]]), bytes(4)),
        r"part 'actions': unsupported dtype '>f4'",
    ),
    "dtype-native-spelling": (
        frames_of(arrays(["actions", "a", "float32", [1]]), bytes(4)),
        r"part 'actions': unsupported dtype 'float32'",
    ),
    "shape-negative": (
        frames_of(arrays(["actions", "a", "<f4", [-1]]), bytes(4)),
        r"part 'actions': malformed shape \[-1\]",
    ),
    "shape-str": (
        frames_of(arrays(["actions", "a", "<f4", "4"]), bytes(16)),
        r"part 'actions': malformed shape '4'",
    ),
    "shape-too-many-dims": (
        frames_of(arrays(["actions", "a", "<f4", [1] * 9]), bytes(4)),
        r"part 'actions': malformed shape",
    ),
    "shape-huge-dim": (
        frames_of(arrays(["actions", "a", "|u1", [2**40]]), b""),
        r"part 'actions': malformed shape",
    ),
    "too-few-frames": (
        frames_of(arrays(["actions", "m"])),
        r"header describes 1 payload frame\(s\) but 0 arrived",
    ),
    "too-many-frames": (
        frames_of(arrays(["actions", "m"]), pack([]), pack([])),
        r"header describes 1 payload frame\(s\) but 2 arrived",
    ),
    "frames-without-pl": (
        frames_of(header(), pack([])),
        r"header describes 0 payload frame\(s\) but 1 arrived",
    ),
    "array-short": (
        frames_of(arrays(["actions", "a", "<f4", [4, 2]]), bytes(31)),
        r"part 'actions': 31 bytes for <f4\[4, 2\] which needs 32",
    ),
    "array-long": (
        frames_of(arrays(["actions", "a", "<i8", [4]]), bytes(33)),
        r"part 'actions': 33 bytes for <i8\[4\] which needs 32",
    ),
    "array-huge-shape": (
        frames_of(arrays(["actions", "a", "<f8", [2**39, 2**20]]), bytes(8)),
        r"part 'actions': 8 bytes for <f8\[549755813888, 1048576\]",
    ),
}


@pytest.mark.parametrize("decoder", [decode, decode_header])
@pytest.mark.parametrize("case", REFUSED)
def test_refused(case: str, decoder: Decoder) -> None:
    frames, match = REFUSED[case]
    with pytest.raises(ProtocolError, match=match):
        decoder(frames)


@pytest.mark.parametrize("decoder", [decode, decode_header])
@pytest.mark.parametrize("dtype", [["<f4"], {"kind": "f"}], ids=["list", "map"])
def test_unhashable_dtype_is_refused(decoder: Decoder, dtype: Any) -> None:
    frames = frames_of(arrays(["actions", "a", dtype, [1]]), bytes(4))
    with pytest.raises(ProtocolError, match=r"part 'actions': unsupported dtype"):
        decoder(frames)


@pytest.mark.parametrize("decoder", [decode, decode_header])
def test_shape_whose_size_overflows_int64_is_refused(decoder: Decoder) -> None:
    frames = frames_of(arrays(["actions", "a", "|b1", [2**32, 2**32]]), b"")
    with pytest.raises(ProtocolError, match=r"part 'actions'"):
        decoder(frames)


def test_unknown_header_field_is_refused_even_with_otherwise_valid_message() -> None:
    frames = as_received(encode(CONVERSATIONS["step-reply"]))
    tampered = {**unpack(frames[0], "header"), "compression": "zstd"}
    with pytest.raises(ProtocolError, match=r"unknown header field\(s\): compression"):
        decode([pack(tampered), *frames[1:]])


def test_structured_part_that_is_not_msgpack_is_refused() -> None:
    frames = frames_of(arrays(["actions", "m"]), b"\x92\x01")  # a 2-list holding one item
    with pytest.raises(ProtocolError, match=r"part 'actions' is not valid msgpack"):
        decode(frames)


# -- size limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", [decode, decode_header])
def test_header_over_the_limit(decoder: Decoder) -> None:
    frames = as_received(encode(CONVERSATIONS["ready"]))
    limits = Limits(max_header_bytes=len(frames[0]) - 1)
    with pytest.raises(MessageTooLarge, match=rf"header of {len(frames[0])} bytes is over the"):
        decoder(frames, limits)
    assert decoder(frames, Limits(max_header_bytes=len(frames[0]))).op is Op.READY


@pytest.mark.parametrize("decoder", [decode, decode_header])
def test_message_over_the_limit(decoder: Decoder) -> None:
    frames = as_received(encode(CONVERSATIONS["step-reply-array"]))
    total = sum(map(len, frames))
    with pytest.raises(MessageTooLarge, match=rf"message of {total} bytes is over the limit of"):
        decoder(frames, Limits(max_message_bytes=total - 1))
    assert decoder(frames, Limits(max_message_bytes=total)).op is Op.REPLY


def test_limits_are_checked_before_anything_is_parsed() -> None:
    garbage = [b"\xc1" * 100, b"\xff" * 1000]
    with pytest.raises(MessageTooLarge, match=r"header of 100 bytes"):
        decode(garbage, Limits(max_header_bytes=99))
    with pytest.raises(MessageTooLarge, match=r"message of 1100 bytes"):
        decode(garbage, Limits(max_message_bytes=1099))


def test_message_too_large_is_a_protocol_error() -> None:
    assert issubclass(MessageTooLarge, ProtocolError)


# -- encode refuses what decode would refuse ----------------------------------------------------

ENCODE_REFUSED: dict[str, tuple[Message, str]] = {
    "op-unknown": (Message(cast(Op, 99)), r"unknown op 99"),
    "request-id-negative": (Message(Op.PING, request_id=-1), r"request id must be an unsigned"),
    "request-id-too-big": (Message(Op.PING, request_id=2**64), r"request id must be an unsigned"),
    "worker-missing": (Message(Op.STEP, env_ids=IDS), r"STEP needs a worker id"),
    "session-short": (Message(Op.PING, session=b"x" * 15), r"client session \('s'\) is 16 bytes"),
    "session-str": (Message(Op.PING, session=cast(bytes, "x" * 16)), r"client session"),
    "group-negative": (Message(Op.PING, group=-1), r"group id must be an unsigned"),
    "hello-session-meta-short": (
        Message(Op.REPLY, meta={"session": b"x"}),
        r"meta field 'session' of REPLY has a wrong type",
    ),
    "worker-negative": (Message(Op.STATE, worker=-2, env_ids=IDS), r"worker id must be a non-neg"),
    "ids-missing": (Message(Op.CLOSE, worker=0), r"CLOSE needs env ids"),
    "meta-missing": (Message(Op.ALLOC, meta={"env": "echo"}), r"ALLOC needs meta field 'num_e"),
    "meta-unknown": (Message(Op.PING, meta={"env": "echo"}), r"unknown meta field 'env' for PING"),
    "meta-bool-for-int": (
        Message(Op.ALLOC, meta={"env": "echo", "num_envs": True}),
        r"meta field 'num_envs' of ALLOC has a wrong type or value",
    ),
    "meta-numpy-int": (
        Message(Op.ALLOC, meta={"env": "echo", "num_envs": np.int64(4)}),
        r"meta field 'num_envs' of ALLOC has a wrong type or value",
    ),
    "meta-value-unencodable": (
        Message(Op.CREATE, worker=0, env_ids=IDS, meta={"env": "echo", "kwargs": {"f": object}}),
        r"payload cannot be encoded: cannot encode type",
    ),
    "part-not-allowed": (
        Message(Op.STEP, worker=0, env_ids=IDS, parts={"obs": []}),
        r"STEP carries no part named 'obs'",
    ),
    "part-on-control-op": (
        Message(Op.HEARTBEAT, parts={"errors": []}),
        r"HEARTBEAT carries no part named 'errors'",
    ),
    "part-unencodable": (
        Message(Op.STEP, worker=0, env_ids=IDS, parts={"actions": [{"message": {1, 2}}]}),
        r"payload cannot be encoded: cannot encode set",
    ),
    "dtype-object": (
        Message(Op.REPLY, parts={"obs": np.array([{"a": 1}, None], dtype=object)}),
        r"part 'obs': unsupported dtype object",
    ),
    "dtype-unicode": (
        Message(Op.REPLY, parts={"obs": np.array(["ab", "c"])}),
        r"part 'obs': unsupported dtype <U2",
    ),
    "dtype-complex": (
        Message(Op.REPLY, parts={"obs": np.zeros(2, dtype=np.complex64)}),
        r"part 'obs': unsupported dtype complex64",
    ),
    "dtype-datetime": (
        Message(Op.REPLY, parts={"obs": np.zeros(2, dtype="datetime64[s]")}),
        r"part 'obs': unsupported dtype datetime64\[s\]",
    ),
    "dtype-structured": (
        Message(Op.REPLY, parts={"obs": np.zeros(2, dtype=[("x", "<f4")])}),
        r"part 'obs': unsupported dtype",
    ),
    "too-many-dims": (
        Message(Op.REPLY, parts={"obs": np.zeros((1,) * 9, dtype=np.uint8)}),
        r"part 'obs': malformed shape",
    ),
}


@pytest.mark.parametrize("case", ENCODE_REFUSED)
def test_encode_refuses(case: str) -> None:
    message, match = ENCODE_REFUSED[case]
    with pytest.raises(ProtocolError, match=match):
        encode(message)


# -- pack: one packer per thread ---------------------------------------------------------------


def test_pack_after_a_failure_starts_clean() -> None:
    with pytest.raises(ProtocolError, match="cannot encode set"):
        pack([1, "written before the failure", {1, 2}])
    with pytest.raises(ProtocolError, match="cannot encode int"):
        pack({"n": 2**64})
    assert pack({"a": [1, 2]}) == msgpack.packb({"a": [1, 2]})


def test_threads_packing_at_once_each_get_their_own_bytes() -> None:
    # numpy values go through the packer's Python callback, where threads can switch.
    values = [[{"i": np.int64(t), "x": np.float32(k)} for k in range(200)] for t in range(4)]
    expected = [pack(value) for value in values]
    mismatches: list[int] = []

    def pack_often(t: int) -> None:
        for _ in range(50):
            if pack(values[t]) != expected[t]:
                mismatches.append(t)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=pack_often, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not mismatches


def test_unpack_names_what_failed() -> None:
    with pytest.raises(ProtocolError, match=r"^part 'obs' is not valid msgpack: "):
        unpack(b"\x93\x01", "part 'obs'")


def test_error_message_shapes() -> None:
    bare = error_message(3, "TooManyInFlight", "limit 64 reached")
    assert bare == Message(
        Op.ERROR, request_id=3, meta={"type": "TooManyInFlight", "message": "limit 64 reached"}
    )
    lost = error_message(4, "SessionLost", "reset to re-place", env_ids=IDS, traceback="tb")
    assert lost.env_ids is IDS
    assert lost.meta == {"type": "SessionLost", "message": "reset to re-place", "traceback": "tb"}


def test_encode_refuses_a_message_over_the_senders_limit() -> None:
    message = Message(Op.REPLY, 3, parts={"obs": ["x" * 1000]})
    size = sum(len(bytes(f)) for f in encode(message))
    with pytest.raises(
        MessageTooLarge, match=rf"message of \d+ bytes is over the limit of {size - 1}"
    ):
        encode(message, Limits(max_message_bytes=size - 1))
    assert decode(encode(message, Limits(max_message_bytes=size))).parts == message.parts


def test_a_repeated_part_is_packed_once_and_decodes_as_a_list() -> None:
    kwargs = {"level": 3, "name": "a"}
    repeated = encode(
        Message(Op.RESET, 1, worker=0, env_ids=np.arange(4), parts={"kwargs": Repeated(kwargs, 4)})
    )
    listed = encode(
        Message(Op.RESET, 1, worker=0, env_ids=np.arange(4), parts={"kwargs": [kwargs] * 4})
    )
    assert [bytes(f) for f in repeated] == [bytes(f) for f in listed]
    assert decode(repeated).parts["kwargs"] == [kwargs] * 4


def test_a_repeated_part_over_the_limit_fails_before_its_copies_are_made() -> None:
    blob = {"blob": "x" * 2**20}
    message = Message(
        Op.RESET, 1, worker=0, env_ids=np.arange(64), parts={"kwargs": Repeated(blob, 64)}
    )
    expected = 3 + 64 * len(msgpack.packb(blob))  # an array16 header, then 64 copies
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooLarge, match=rf"message of {expected} bytes"):
            encode(message, Limits(max_message_bytes=16 * 2**20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"{peak} bytes allocated: more than the one encoding"
