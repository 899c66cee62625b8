"""Every socket recipe bounds the frames it accepts, above the message limit it is given."""

from __future__ import annotations

import pytest
import zmq

from openenv_zmq import sockets
from openenv_zmq.protocol import DEFAULT_LIMITS, Limits

LIMITS = Limits(max_message_bytes=2**20)


def test_every_socket_recipe_sets_max_msg_size_above_the_limit() -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        made = [
            sockets.configure(context.socket(zmq.DEALER)),
            sockets.configure(context.socket(zmq.DEALER), limits=LIMITS),
            sockets.worker_dealer(context.socket(zmq.DEALER), b"w", LIMITS),
            sockets.router(context, "tcp://127.0.0.1:*", LIMITS),
        ]
        sizes = [s.getsockopt(zmq.MAXMSGSIZE) for s in made]
        for s in made:
            s.close(linger=0)
    finally:
        context.term()
    headroom = sockets.MAX_FRAME_HEADROOM_BYTES
    assert sizes == [
        DEFAULT_LIMITS.max_message_bytes + headroom,
        *[LIMITS.max_message_bytes + headroom] * 3,
    ]
    assert headroom >= DEFAULT_LIMITS.max_header_bytes  # room for a whole header


def _pair(context: zmq.Context[zmq.Socket[bytes]]) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    sender, receiver = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    receiver.bind("inproc://frames")
    sender.connect("inproc://frames")
    return sender, receiver


def test_frames_sent_one_by_one_arrive_as_whole_messages_and_queued_drains_without_again() -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sender, receiver = _pair(context)
    try:
        with pytest.raises(zmq.Again):
            sockets.receive_frames(receiver)
        messages: list[list[bytes | memoryview]] = [
            [b"one"],
            [b"a", memoryview(b"bc"), b""],
            [b"x" * 70_000, b"y"],
        ]
        for frames in messages:
            sockets.send_frames(sender, frames)
        assert sockets.readable(receiver, 1000)
        first = list(sockets.queued(receiver, 2))  # the limit holds
        rest = list(sockets.queued(receiver, 10))
        assert [[f.bytes for f in m] for m in first + rest] == [
            [bytes(f) for f in m] for m in messages
        ]
        assert len(first) == 2 and not sockets.readable(receiver)
    finally:
        context.destroy(linger=0)


def test_a_frame_that_cannot_be_sent_ends_its_message_instead_of_joining_the_next() -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sender, receiver = _pair(context)
    try:
        with pytest.raises(TypeError):
            sockets.send_frames(sender, [b"header", "not a buffer", b"last"])
        sockets.send_frames(sender, [b"next", b"message"])
        assert sockets.readable(receiver, 1000)
        got = [[f.bytes for f in m] for m in sockets.queued(receiver, 10)]
        assert got == [[b"header", b""], [b"next", b"message"]]
    finally:
        context.destroy(linger=0)
