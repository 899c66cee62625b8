"""The gateway closes connections whose request headers are late (``--header-timeout``).

Each test runs ``openenv-broker start --gateway-port P --header-timeout`` as a user does and
talks to the gateway over raw TCP sockets, websockets and OpenEnv's own client.
"""

from __future__ import annotations

import asyncio
import json
import selectors
import socket
import time
import urllib.request

import pytest
import websockets
from openenv.core.generic_client import GenericEnvClient  # type: ignore[import-untyped]

from openenv_zmq.gateway.header_timeout import header_timeout_protocol
from tests.integration.test_gateway import one_session
from tests.processes import Processes, free_port, wait_until

HEADER_TIMEOUT = 0.5
SLOW_CLIENTS = 100
PARTIAL_REQUEST = b"GET /health HTTP/1.1\r\nHost: x\r\n"
"""A request line and a header, without the blank line that ends the headers."""
CLOSE_MARGIN = 5.0
"""How late after the timeout a close may be seen on this loaded 2-core machine."""


@pytest.fixture
def gateway(procs: Processes) -> tuple[str, int]:
    """A broker with one echo worker and a gateway (stopped by ``procs``): its host and port."""
    port = free_port()
    extra = ("--gateway-port", str(port), "--header-timeout", str(HEADER_TIMEOUT))
    procs.broker(workers=1, extra=extra)

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, 60, "the gateway to listen")
    return "127.0.0.1", port


def closed_within(socks: list[socket.socket], timeout: float) -> dict[int, float]:
    """Index -> monotonic time at which the server closed that socket, for those it closed
    within ``timeout`` seconds (a read returns EOF or the connection is reset)."""
    closed: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for i, sock in enumerate(socks):
            selector.register(sock, selectors.EVENT_READ, i)
        while len(closed) < len(socks) and time.monotonic() < deadline:
            for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
                try:
                    data = socks[key.data].recv(4096)
                except ConnectionResetError:
                    data = b""
                assert not data, f"the server answered a partial request: {data!r}"
                closed[key.data] = time.monotonic()
                selector.unregister(key.fileobj)
    return closed


def health(host: str, port: int) -> None:
    with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=10) as reply:
        assert json.load(reply) == {"status": "healthy"}


async def ask(ws: websockets.ClientConnection, frame: str) -> str:
    await ws.send(frame)
    kind: str = json.loads(await asyncio.wait_for(ws.recv(), 10))["type"]
    return kind


def read_response(sock: socket.socket) -> bytes:
    """One HTTP response with a ``content-length`` body, read off a blocking socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"the server closed the connection mid-response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    [length] = [
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    ]
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection mid-body"
        body += chunk
    return head


def test_slow_header_connections_are_closed_while_sessions_carry_on(
    gateway: tuple[str, int],
) -> None:
    # Before: uvicorn kept every one of them open (100 of 100 still open after 9 s).
    host, port = gateway
    url = f"http://{host}:{port}"

    async def run() -> None:
        async with websockets.connect(f"ws://{host}:{port}/ws") as idle_session:
            assert await ask(idle_session, '{"type":"reset"}') == "observation"
            opened = time.monotonic()
            slow = [socket.create_connection((host, port), timeout=10) for _ in range(SLOW_CLIENTS)]
            try:
                for sock in slow:
                    sock.sendall(PARTIAL_REQUEST)
                # while the slow clients hold their connections
                await asyncio.to_thread(health, host, port)
                _, step, _ = await one_session(url, "during")
                assert step.observation["echoed_message"] == "during"
                closed = await asyncio.to_thread(closed_within, slow, HEADER_TIMEOUT + CLOSE_MARGIN)
            finally:
                for sock in slow:
                    sock.close()
            assert len(closed) == SLOW_CLIENTS, f"{SLOW_CLIENTS - len(closed)} still open"
            assert min(closed.values()) - opened >= HEADER_TIMEOUT
            # the session opened first sat idle through all of it, and is served still
            assert await ask(idle_session, '{"type":"step","data":{"message":"x"}}') == (
                "observation"
            )
        await asyncio.to_thread(health, host, port)
        _, step, _ = await one_session(url, "after")
        assert step.observation["echoed_message"] == "after"

    asyncio.run(run())


def test_headers_sent_a_byte_at_a_time_are_closed_on_time(gateway: tuple[str, int]) -> None:
    # The deadline is per request, not per byte: trickling never moves it.
    trickle = b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 1000
    opened = time.monotonic()
    with socket.create_connection(gateway, timeout=10) as sock:
        sent = 0
        while sent < len(trickle) and time.monotonic() - opened < HEADER_TIMEOUT + CLOSE_MARGIN:
            try:
                sock.sendall(trickle[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            if closed_within([sock], HEADER_TIMEOUT / 10):
                break
        lasted = time.monotonic() - opened
    assert HEADER_TIMEOUT <= lasted < HEADER_TIMEOUT + CLOSE_MARGIN
    assert sent > 5, "the test should have trickled bytes through the timeout"


def test_each_request_on_a_keep_alive_connection_gets_the_timeout(
    gateway: tuple[str, int],
) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(gateway, timeout=10) as sock:
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        # idle between requests: uvicorn's keep-alive timeout (5 s) governs, not this one
        time.sleep(2 * HEADER_TIMEOUT)
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        sock.sendall(PARTIAL_REQUEST)
        closed = closed_within([sock], HEADER_TIMEOUT + CLOSE_MARGIN)
        assert closed and closed[0] - started >= HEADER_TIMEOUT


def test_an_idle_websocket_session_outlives_the_header_timeout(gateway: tuple[str, int]) -> None:
    host, port = gateway

    async def run() -> None:
        async with GenericEnvClient(base_url=f"http://{host}:{port}") as client:
            await client.reset()
            await asyncio.sleep(3 * HEADER_TIMEOUT)
            step = await client.step({"message": "still here"})
            assert step.observation["echoed_message"] == "still here"
            assert (await client.state())["step_count"] == 1

    asyncio.run(run())


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_header_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        header_timeout_protocol(timeout)
