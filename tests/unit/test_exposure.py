"""Which bind addresses other hosts reach: what ``start`` refuses without CURVE or --insecure."""

from __future__ import annotations

import pytest

from broker.exposure import host_of, reachable_from_other_hosts


@pytest.mark.parametrize(
    "address",
    [
        "tcp://127.0.0.1:5555",
        "tcp://127.0.0.1:*",
        "tcp://127.8.9.10:1",
        "tcp://localhost:5555",
        "tcp://LOCALHOST:5555",
        "tcp://[::1]:5555",
        "ipc:///tmp/openenv/front.sock",
        "ipc://@abstract",
        "inproc://broker",
    ],
)
def test_loopback_and_ipc_stay_on_this_host(address: str) -> None:
    assert not reachable_from_other_hosts(address)


@pytest.mark.parametrize(
    "address",
    [
        "tcp://0.0.0.0:5555",
        "tcp://*:5555",
        "tcp://[::]:5555",
        "tcp://10.1.2.3:5555",
        "tcp://eth0:5555",
        "tcp://broker.example.com:5555",
        "tcp://[::ffff:10.0.0.1]:5555",
        "tipc://{15560,0,0}",
        "vmci://1:5555",
        "ws://0.0.0.0:5555",
        "udp://127.0.0.1:5555",
    ],
)
def test_anything_else_counts_as_reachable(address: str) -> None:
    assert reachable_from_other_hosts(address)


def test_host_of_removes_port_and_brackets() -> None:
    assert host_of("tcp://[::1]:5555") == "::1"
    assert host_of("tcp://127.0.0.1:*") == "127.0.0.1"
    assert host_of("ipc:///tmp/x.sock") is None
