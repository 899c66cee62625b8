"""The sandbox's pure parts: the session stream's frames, the layer policy, finding cgroups."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from openenv_zmq.errors import SandboxError
from openenv_zmq.sandbox.cgroups import Hierarchy, pids_hierarchy
from openenv_zmq.sandbox.frames import FrameError, FrameReader, encode_frame
from openenv_zmq.sandbox.layers import Layer, SandboxPolicy, check_required, is_on, summary


def test_frames_fed_whole_or_byte_by_byte_come_out_the_same() -> None:
    bodies: list[dict[str, Any]] = [
        {"code": "print(1)"},
        {"stdout": "x" * 70_000, "exit_code": 0},
        {},
    ]
    stream = b"".join(encode_frame(body) for body in bodies)
    whole = FrameReader()
    whole.feed(stream)
    assert [whole.next_frame() for _ in bodies] == bodies
    assert whole.next_frame() is None
    trickled, out = FrameReader(), []
    for byte in stream:
        trickled.feed(bytes([byte]))
        while (frame := trickled.next_frame()) is not None:
            out.append(frame)
    assert out == bodies


@pytest.mark.parametrize(
    ("stream", "complaint"),
    [
        ((2**31).to_bytes(4, "big"), "over the limit"),
        (b"\x00\x00\x00\x01\xc1", "not msgpack"),
        (b"\x00\x00\x00\x01\x01", "holding int"),
        (len(msgpack.packb([1])).to_bytes(4, "big") + msgpack.packb([1]), "holding list"),
    ],
)
def test_a_stream_that_is_not_frames_is_a_frame_error(stream: bytes, complaint: str) -> None:
    reader = FrameReader()
    reader.feed(stream)
    with pytest.raises(FrameError, match=complaint):
        reader.next_frame()


def test_seccomp_and_rlimits_are_required_unless_lowered_and_others_can_be_raised() -> None:
    policy = SandboxPolicy()
    assert policy.required == {Layer.SECCOMP, Layer.RLIMITS}
    states = {"seccomp": "off: EINVAL", "rlimits": "on", "netns": "off: EPERM"}
    with pytest.raises(SandboxError, match=r"seccomp \(off: EINVAL\).*--sandbox-optional"):
        check_required(policy, states)
    check_required(policy.adjusted(lower=[Layer.SECCOMP]), states)
    with pytest.raises(SandboxError, match="netns"):
        check_required(policy.adjusted(require=[Layer.NETNS], lower=[Layer.SECCOMP]), states)
    with pytest.raises(SandboxError, match=r"uid \(off: not attempted\)"):
        check_required(policy.adjusted(require=[Layer.UID]), {"seccomp": "on", "rlimits": "on"})


def test_layer_states_read_as_on_or_off() -> None:
    assert is_on("on") and is_on("on: uid 5") and not is_on("off: why") and not is_on("only")
    assert summary({"seccomp": "on", "netns": "off: EPERM", "uid": "on: x"}) == (
        "seccomp, uid (off: netns)"
    )


MOUNTS_V1 = """\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
35 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 30 0:34 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 30 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
MOUNTS_V2 = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
MOUNTS_NESTED = "40 30 0:34 /kubepods/pod1 /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"


@pytest.mark.parametrize(
    ("mounts", "cgroups", "found"),
    [
        (MOUNTS_V1, "8:pids:/\n4:memory:/a\n0::/\n", Hierarchy("/sys/fs/cgroup/pids", 1)),
        (MOUNTS_V1, "8:pids:/jobs/7\n0::/\n", Hierarchy("/sys/fs/cgroup/pids/jobs/7", 1)),
        (MOUNTS_V2, "0::/user.slice/s\n", Hierarchy("/sys/fs/cgroup/user.slice/s", 2)),
        (MOUNTS_NESTED, "8:pids:/kubepods/pod1/c\n", Hierarchy("/sys/fs/cgroup/pids/c", 1)),
        ("30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n", "0::/\n", None),
    ],
)
def test_the_pids_hierarchy_is_found_from_mountinfo_and_proc_cgroup(
    mounts: str, cgroups: str, found: Hierarchy | None
) -> None:
    assert pids_hierarchy(mounts, cgroups) == found
