"""What a client needs from a transport, sync and asyncio, and the defaults every transport shares.

A transport carries request messages to a broker and brings their answers back; it stamps each
request with a fresh id. The clients speak to nothing else, so a test can hand them a transport
that needs no sockets (``broker.inprocess``), as httpx's ``MockTransport`` does.

Call order: :meth:`Transport.send` returns a request id; collect its answer with
:meth:`Transport.wait_any`. :meth:`Transport.exchange` sends a round of requests and waits for
all their answers. :meth:`Transport.close` ends the transport; nothing may be sent after it.

A transport keeps the client session too: it sends HELLO before its first request that acts for
one (and again after an answer saying the broker knows the session no more), and stamps every
request with the session's token, as it stamps request ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from openenv_zmq.errors import RequestTimeout
from openenv_zmq.protocol import Message

DEFAULT_TIMEOUT = 60.0
"""Seconds a request may wait for its answer (OpenEnv's message timeout)."""
DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds the first PING may wait for the broker (OpenEnv's connect timeout)."""
CLOSE_TIMEOUT = 5.0
"""Closing must not hang on a dead broker: its slots are gone with it anyway."""


class Transport(Protocol):
    """A blocking transport to one broker."""

    address: str
    """Where the broker is, as error messages name it."""
    timeout: float
    """Seconds a request waits for its answer when a call passes no timeout."""

    @property
    def session(self) -> bytes | None:
        """The client session's token, once the broker has answered HELLO."""
        ...

    def send(self, messages: Sequence[Message]) -> list[int]:
        """Send ``messages``, each with a fresh request id, returned in order. Every one is
        encoded before the first is sent: one over the limits (:class:`MessageTooLarge`) or not
        encodable raises with nothing sent. Raises :class:`TransportError` when they cannot be
        sent."""
        ...

    def exchange(self, messages: list[Message], timeout: float | None = None) -> list[Message]:
        """Send ``messages`` and return their answers in the same order. Raises
        :class:`RequestTimeout` naming how many got no answer (those are forgotten)."""
        ...

    def wait_any(
        self, request_ids: Sequence[int], timeout: float | None = None
    ) -> dict[int, Message]:
        """The answers (at least one) of the sent ``request_ids`` that have arrived, by request
        id in the order given. Raises :class:`RequestTimeout` when none arrives in time; the
        requests stay awaited then."""
        ...

    def close(self) -> None: ...


class AsyncTransport(Protocol):
    """:class:`Transport` with ``await``; one transport may serve many coroutines at once."""

    address: str
    timeout: float

    @property
    def session(self) -> bytes | None: ...

    async def send(self, messages: Sequence[Message]) -> list[int]: ...

    async def exchange(
        self, messages: list[Message], timeout: float | None = None
    ) -> list[Message]: ...

    async def wait_any(
        self, request_ids: Sequence[int], timeout: float | None = None
    ) -> dict[int, Message]: ...

    async def close(self) -> None: ...


def late_answers(missing: int, sent: int, address: str, timeout: float) -> RequestTimeout:
    """The error of an exchange in which ``missing`` of ``sent`` requests got no answer."""
    return RequestTimeout(
        f"{missing} of {sent} request(s) to {address} got no answer within {timeout:g} s"
    )


def no_answer(address: str, timeout: float) -> RequestTimeout:
    """The error of a wait for any answer that got none."""
    return RequestTimeout(f"no answer from {address} within {timeout:g} s")
