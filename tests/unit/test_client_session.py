"""The client's side of sessions, without sockets: what the request table stamps and learns, and
when a waiting call gives the broker up for lost."""

from __future__ import annotations

import numpy as np
import pytest

from openenv_zmq.client.pulse import LIVENESS, Liveness
from openenv_zmq.client.requests import RequestTable, needs_session, unknown_session
from openenv_zmq.protocol import Message, Op, decode, encode, error_message

TOKEN = bytes(range(16))
IDS = np.arange(7, 9, dtype=np.int64)


def answer(table: RequestTable, message: Message) -> Message | None:
    return table.read(encode(message))


def test_a_hello_answer_opens_the_session_and_every_later_request_carries_it() -> None:
    table = RequestTable()
    request_id, frames = table.hello()
    assert decode(frames).op is Op.HELLO and decode(frames).session is None
    reply = Message(Op.REPLY, request_id, meta={"session": TOKEN, "heartbeat_s": 0.25})
    assert answer(table, reply) is not None
    assert (table.session, table.heartbeat_s) == (TOKEN, 0.25)
    [(_, step)] = table.stamp_all([Message(Op.STATE, worker=1, env_ids=IDS, group=7)])
    assert (decode(step).session, decode(step).group) == (TOKEN, 7)


@pytest.mark.parametrize("ended", ["UnknownSession", "LeaseExpired"])
def test_an_answer_saying_the_session_is_gone_clears_it(ended: str) -> None:
    table = RequestTable()
    table.session = TOKEN
    [(request_id, _)] = table.stamp_all([Message(Op.PING)])
    answer(table, error_message(request_id, ended, "gone"))
    assert table.session is None


def test_other_errors_keep_the_session() -> None:
    table = RequestTable()
    table.session = TOKEN
    [(request_id, _)] = table.stamp_all([Message(Op.PING)])
    answer(table, error_message(request_id, "NotOwner", "not yours"))
    assert table.session == TOKEN


def test_an_answer_nobody_awaits_changes_no_session() -> None:
    table = RequestTable()
    answer(table, Message(Op.REPLY, 99, meta={"session": TOKEN}))
    assert table.session is None


def test_only_requests_acting_for_a_client_need_a_session() -> None:
    assert not needs_session([Message(Op.PING), Message(Op.STATUS), Message(Op.HELLO)])
    assert needs_session([Message(Op.PING), Message(Op.ALLOC)])
    assert needs_session([Message(Op.STEP, worker=1)])


def test_only_unknown_session_refusals_are_sent_again() -> None:
    answers = [
        Message(Op.REPLY, 1),
        error_message(2, "UnknownSession", "restarted"),
        error_message(3, "LeaseExpired", "gone"),
        error_message(4, "UnknownSession", "restarted"),
    ]
    assert unknown_session(answers) == [1, 3]


def test_the_broker_is_lost_after_liveness_intervals_without_an_answer() -> None:
    liveness = Liveness(interval=1.0, now=100.0)
    assert not liveness.lost(100.0 + LIVENESS, waiting_since=0.0)
    assert liveness.lost(100.0 + LIVENESS + 0.01, waiting_since=0.0)
    liveness.answered(102.0)
    assert not liveness.lost(102.0 + LIVENESS, waiting_since=0.0)


def test_silence_counts_from_the_calls_start_at_the_earliest() -> None:
    """A process that held the GIL for a minute starved its heartbeat thread: its next call
    must give the heartbeat a chance before it declares the broker lost."""
    liveness = Liveness(interval=1.0, now=0.0)
    assert not liveness.lost(60.0, waiting_since=59.0)
    assert liveness.silence(60.0, waiting_since=59.0) == 1.0
    assert liveness.lost(59.0 + LIVENESS + 0.01, waiting_since=59.0)


def test_only_the_answer_to_the_hello_opens_a_session() -> None:
    """A worker's reply carrying a ``session`` field must not replace the client's token."""
    table = RequestTable()
    table.session = TOKEN
    [(request_id, _)] = table.stamp_all([Message(Op.STATE, worker=1, env_ids=IDS, group=7)])
    answer(table, Message(Op.REPLY, request_id, meta={"session": bytes(16)}))
    assert table.session == TOKEN


def test_a_refusal_of_a_request_from_an_older_session_keeps_the_new_one() -> None:
    table = RequestTable()
    table.session = TOKEN
    [(old, _)] = table.stamp_all([Message(Op.PING)])
    hello_id, _ = table.hello()
    answer(table, Message(Op.REPLY, hello_id, meta={"session": bytes(16)}))
    answer(table, error_message(old, "UnknownSession", "restarted"))
    assert table.session == bytes(16)
