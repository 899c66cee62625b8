"""Memory bounds at the sockets: a giant frame is dropped by libzmq before the broker allocates
it, a client refuses a request over its limit before anything leaves, and a worker answers the
envs whose rows would take its reply over the limit with per-env errors."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from echo_env import EchoAction
from zmq.utils.monitor import recv_monitor_message

from openenv_zmq import AsyncBatchClient, BatchClient
from openenv_zmq.errors import EnvExecutionError, MessageTooLarge
from openenv_zmq.protocol import Limits, Message, Op, encode
from tests.processes import Broker, Processes, wait_until
from tests.unit.worker_envs import INFLATING, inflate

MAX_MESSAGE_MB = 16
CLIENT_LIMITS = Limits(max_message_bytes=2**20)
"""Under the broker's: a request between the two is refused by the client alone."""
GIANT_FRAME_BYTES = 512 * 2**20
"""Far over the broker's limit and its backstop; ``bytes(n)`` maps zero pages, so sending it
costs this process no memory."""
PEAK_GROWTH_BYTES = 64 * 2**20
"""What the broker's peak RSS may grow by while the giant frame arrives: far less than it."""


@pytest.fixture
def broker(procs: Processes) -> Broker:
    return procs.broker(workers=1, extra=("--max-message-mb", str(MAX_MESSAGE_MB)))


def peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


@pytest.fixture
def steps(broker: Broker) -> Iterator[list[int]]:
    """A well-behaved client stepping 8 envs for the whole test; yields its batch count."""
    count = [0]
    stop = threading.Event()
    failures: list[BaseException] = []

    def step_loop() -> None:
        try:
            with BatchClient(broker.frontend, timeout=10) as client:
                envs = client.make("echo", num_envs=8)
                envs.reset()
                while not stop.is_set():
                    r = envs.step([EchoAction(message="steady")] * 8)
                    assert not r.errors, r.errors
                    count[0] += 1
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=step_loop, name="good-client")
    thread.start()
    try:
        wait_until(lambda: count[0] > 0 or failures, 30, "the good client to step")
        yield count
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert not failures, failures


@pytest.mark.parametrize("door", ["frontend", "backend"])
def test_a_giant_frame_is_dropped_by_libzmq_before_the_broker_allocates_it(
    broker: Broker, steps: list[int], door: str
) -> None:
    pid = broker.process.pid
    before = peak_rss(pid)
    raw: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    monitor = raw.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        raw.connect(getattr(broker, door))
        header = encode(Message(Op.PING, 7))[0]
        raw.send_multipart([header, bytes(GIANT_FRAME_BYTES)], copy=False)
        poller = zmq.Poller()
        poller.register(raw, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        ready = dict(poller.poll(30_000))
        answered = raw in ready
        dropped = monitor in ready and recv_monitor_message(monitor)["event"] == (
            zmq.EVENT_DISCONNECTED
        )
    finally:
        raw.disable_monitor()
        monitor.close(linger=0)
        raw.close(linger=0)
    growth = peak_rss(pid) - before
    assert dropped and not answered, f"dropped={dropped} answered={answered} growth={growth}"
    assert growth < PEAK_GROWTH_BYTES, f"the broker's peak RSS grew by {growth / 2**20:.0f} MiB"
    after = steps[0]
    wait_until(lambda: steps[0] > after + 2, 10, "the good client to step on")


def test_a_client_refuses_an_oversized_request_before_sending_it(broker: Broker) -> None:
    with BatchClient(broker.frontend, timeout=10, limits=CLIENT_LIMITS) as client:
        envs = client.make("echo", num_envs=2)
        envs.reset()
        big = EchoAction(message="x" * CLIENT_LIMITS.max_message_bytes)
        limit = CLIENT_LIMITS.max_message_bytes
        with pytest.raises(MessageTooLarge, match=rf"\d+ bytes is over the limit of {limit}"):
            envs.step([big, EchoAction(message="small")])
        # Nothing left: neither env stepped, and the client goes on.
        assert [s.step_count for s in envs.state()] == [0, 0]
        r = envs.step([EchoAction(message="a")] * 2)
        assert not r.errors
        assert [s.step_count for s in envs.state()] == [1, 1]


def test_an_async_client_refuses_an_oversized_request_before_sending_it(broker: Broker) -> None:
    async def scenario() -> None:
        async with AsyncBatchClient(broker.frontend, timeout=10, limits=CLIENT_LIMITS) as client:
            envs = await client.make("echo", num_envs=2)
            await envs.reset()
            big = EchoAction(message="x" * CLIENT_LIMITS.max_message_bytes)
            with pytest.raises(MessageTooLarge, match=r"over the limit"):
                await envs.step([big, big])
            assert [s.step_count for s in await envs.state()] == [0, 0]
            r = await envs.step([EchoAction(message="a")] * 2)
            assert not r.errors

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_worker_fails_the_envs_whose_rows_would_take_its_reply_over_the_limit(
    procs: Processes,
) -> None:
    broker = procs.broker(workers=1, envs=(INFLATING,), extra=("--max-message-mb", "1"))
    with BatchClient(broker.frontend, timeout=30) as client:
        envs = client.make(INFLATING, num_envs=8)
        envs.reset()
        actions = [EchoAction(message="hi")] * 8
        actions[1] = actions[6] = EchoAction(**inflate(2 * 2**20))  # each twice the limit
        r = envs.step(actions)
        big = [int(envs.env_ids[1]), int(envs.env_ids[6])]
        assert sorted(r.errors) == sorted(big)
        for env_id in big:
            error = r.errors[env_id]
            assert isinstance(error, EnvExecutionError)
            assert re.fullmatch(
                r"its observation of \d{7} bytes does not fit a reply under the limit of 1048576",
                str(error),
            )
        expected: list[str | None] = ["hi"] * 8
        expected[1] = expected[6] = None
        assert [o and o.echoed_message for o in r.observations] == expected
        assert r.dones.tolist() == [False, True, False, False, False, False, True, False]
        r = envs.step([EchoAction(message="again")] * 8)
        assert not r.errors
        assert {o.echoed_message for o in r.observations} == {"again"}
        assert [s.step_count for s in envs.state()] == [2] * 8
