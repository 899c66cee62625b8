"""Which bind addresses other hosts reach: what ``start`` refuses without CURVE or --insecure."""

from __future__ import annotations

import re

import pytest

from broker.exposure import (
    advertised,
    host_of,
    is_wildcard,
    local_address,
    reachable_from_other_hosts,
)


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


@pytest.mark.parametrize(
    ("bound", "local"),
    [
        ("tcp://0.0.0.0:5556", "tcp://127.0.0.1:5556"),
        ("tcp://*:5556", "tcp://127.0.0.1:5556"),
        ("tcp://[::]:5556", "tcp://[::1]:5556"),
        ("tcp://10.1.2.3:5556", "tcp://10.1.2.3:5556"),
        ("tcp://127.0.0.1:5556", "tcp://127.0.0.1:5556"),
        ("ipc:///tmp/openenv/back.sock", "ipc:///tmp/openenv/back.sock"),
    ],
)
def test_this_hosts_workers_reach_a_wildcard_bind_over_loopback(bound: str, local: str) -> None:
    assert is_wildcard(bound) == (bound != local)
    assert local_address(bound) == local


@pytest.mark.parametrize(
    "address",
    [
        "tcp://10.213.0.1:5556",
        "tcp://broker.example.com:5556",
        "tcp://broker-0.broker:65535",
        "tcp://[fd00::1]:5556",
    ],
)
def test_an_address_to_connect_to_is_advertised_as_given(address: str) -> None:
    assert advertised(address) == address


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.0.0.1:5556", "is not tcp://HOST:PORT"),
        ("ipc:///tmp/back.sock", "is not tcp://HOST:PORT"),
        ("tcp://10.0.0.1", "needs a port"),
        ("tcp://10.0.0.1:*", "needs a port"),
        ("tcp://10.0.0.1:0", "needs a port"),
        ("tcp://10.0.0.1:65536", "needs a port"),
        ("tcp://0.0.0.0:5556", "every interface"),
        ("tcp://*:5556", "every interface"),
        ("tcp://[::]:5556", "every interface"),
        ("tcp://fd00::1:5556", "in brackets, tcp://[fd00::1]:5556"),
        ("tcp://[broker]:5556", "not an IPv6 address"),
        ("tcp://:5556", "not a host name"),
        ("tcp://eth0;10.0.0.1:5556", "not a host name"),
    ],
)
def test_an_address_nobody_can_connect_to_is_refused_saying_why(address: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        advertised(address)
