"""Request ids, the client session, encoding and matching answers to requests: the part of a
client with no I/O."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

from openenv_zmq.errors import ProtocolError
from openenv_zmq.protocol import (
    ANSWER_OPS,
    DEFAULT_LIMITS,
    Frame,
    Limits,
    Message,
    Op,
    decode,
    encode,
)

SESSIONLESS = frozenset({Op.HELLO, Op.PING, Op.STATUS})
"""Requests the broker answers without a session: a client that only looks (``status``) opens
none."""
SESSION_ENDED = frozenset({"UnknownSession", "LeaseExpired"})
"""Error types telling a client its session is gone: the next request opens a new one."""

log = logging.getLogger(__name__)


def needs_session(messages: Sequence[Message]) -> bool:
    return any(message.op not in SESSIONLESS for message in messages)


def unknown_session(answers: Sequence[Message]) -> list[int]:
    """Positions of the answers refusing their request because the broker knows its session no
    more (it restarted): nothing was done, so those requests may be sent again in a new one."""
    return [
        i
        for i, answer in enumerate(answers)
        if answer.op is Op.ERROR and answer.meta["type"] == "UnknownSession"
    ]


def _stamped(message: Message, request_id: int, session: bytes | None) -> Message:
    # By hand: dataclasses.replace costs three times as much, once per request.
    return Message(
        op=message.op,
        request_id=request_id,
        worker=message.worker,
        env_ids=message.env_ids,
        meta=message.meta,
        parts=message.parts,
        session=session,
        group=message.group,
    )


class RequestTable:
    """Stamps outgoing requests with fresh ids and the client session, and reads answers.

    An answer whose id is not awaited (it arrived after its request timed out) is dropped.
    Call order: :meth:`stamp` a request, send its frames, feed whatever arrives to :meth:`read`
    (or :meth:`receive`, which keeps the answer in :attr:`arrived` until :meth:`take` collects
    it); :meth:`forget` the requests given up on.

    The session: an answer to HELLO sets :attr:`session` (and :attr:`heartbeat_s`), which every
    later request carries; an answer saying the broker knows the session no more
    (:data:`SESSION_ENDED`) clears it, and the transport sends HELLO before its next request.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._ids = itertools.count(1)
        self._limits = limits
        self.awaited: set[int] = set()
        self.arrived: dict[int, Message] = {}
        self.session: bytes | None = None
        self._hello_id = 0
        """The request id of the latest HELLO: only its answer opens a session, and only a
        request stamped after it can end that session."""
        self.heartbeat_s = 1.0
        """How often the broker wants a heartbeat from this client (its HELLO answer says)."""

    def stamp(self, message: Message) -> tuple[int, list[Frame]]:
        """``message`` with a fresh request id, encoded; raises :class:`ProtocolError` (and
        awaits nothing) when it cannot be encoded or is over the limits."""
        [stamped] = self.stamp_all([message])
        return stamped

    def stamp_all(self, messages: Sequence[Message]) -> list[tuple[int, list[Frame]]]:
        """Every message stamped and encoded before any is awaited: a round whose last message
        cannot be encoded, or is over the limits (:class:`MessageTooLarge`), raises
        :class:`ProtocolError` before the first is sent, so no env steps without its caller
        seeing the answer."""
        session = self.session
        stamped = [
            (request_id, encode(_stamped(message, request_id, session), self._limits))
            for message, request_id in zip(messages, self._ids, strict=False)
        ]
        self.awaited.update(request_id for request_id, _ in stamped)
        return stamped

    def forget(self, request_ids: Sequence[int]) -> None:
        self.awaited.difference_update(request_ids)

    def read(self, frames: Sequence[Frame]) -> Message | None:
        """The answer in ``frames`` if it is one this client awaits, else ``None``."""
        try:
            message = decode(frames, self._limits)
        except ProtocolError as exc:
            # Without a readable header nobody can tell which request this was; the request
            # it belonged to ends in RequestTimeout.
            log.warning("dropped an undecodable answer: %s", exc)
            return None
        if message.op not in ANSWER_OPS or message.request_id not in self.awaited:
            log.debug(
                "dropped an answer nobody awaits: %s #%d", message.op.name, message.request_id
            )
            return None
        self.awaited.discard(message.request_id)
        if message.request_id == self._hello_id:
            if message.op is Op.REPLY and "session" in message.meta:
                self.session = message.meta["session"]
                self.heartbeat_s = message.meta.get("heartbeat_s", self.heartbeat_s)
        elif (
            message.op is Op.ERROR
            and message.meta["type"] in SESSION_ENDED
            and message.request_id > self._hello_id
        ):
            # A refusal of a request stamped with an older session says nothing of this one.
            self.session = None
        return message

    def receive(self, frames: Sequence[Frame]) -> None:
        """Keep the answer in ``frames`` in :attr:`arrived` if it is awaited."""
        answer = self.read(frames)
        if answer is not None:
            self.arrived[answer.request_id] = answer

    def take(self, request_ids: Sequence[int]) -> dict[int, Message]:
        """The answers of ``request_ids`` that have arrived, removed from :attr:`arrived`."""
        arrived = self.arrived
        return {rid: arrived.pop(rid) for rid in request_ids if rid in arrived}

    def hello(self) -> tuple[int, list[Frame]]:
        """A HELLO stamped and encoded: its answer opens a new session."""
        request_id, frames = self.stamp(Message(Op.HELLO))
        self._hello_id = request_id
        return request_id, frames

    def give_up(self, request_ids: Sequence[int]) -> list[int]:
        """Forget those of ``request_ids`` that got no answer; returns them."""
        missing = [rid for rid in request_ids if rid not in self.arrived]
        self.forget(missing)
        return missing
