"""Every socket recipe bounds the frames it accepts, above the message limit it is given."""

from __future__ import annotations

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
