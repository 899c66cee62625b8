"""A session process: forked by the zygote, hardened, then serving one env instance's calls."""

from __future__ import annotations

import os
import socket
import traceback
from collections.abc import Mapping
from typing import NoReturn

from openenv_zmq.sandbox.frames import RECV_BYTES, FrameError, FrameReader, encode_frame
from openenv_zmq.sandbox.hardening import harden
from openenv_zmq.sandbox.layers import SandboxPolicy, check_required
from openenv_zmq.sandbox.sessions import load_factory


def run_session(
    channel: socket.socket,
    zygote_pid: int,
    factory: str,
    workdir_base: str,
    policy: SandboxPolicy,
    zygote_layers: Mapping[str, str],
) -> NoReturn:
    """Harden this process, build the handler, then answer each request frame until the worker
    closes the channel. Never returns; a failure before serving is sent as the hello's
    ``error``."""
    try:
        layers = {
            **zygote_layers,
            **harden(channel.fileno(), zygote_pid, workdir_base, policy.limits),
        }
        check_required(policy, layers)
        handler = load_factory(factory)()
    except BaseException as exc:  # whatever it is, the worker must hear of it
        _send_and_exit(channel, {"error": f"{type(exc).__name__}: {exc}"}, code=1)
    channel.sendall(encode_frame({"pid": os.getpid(), "layers": layers}))
    reader = FrameReader()
    while True:
        data = channel.recv(RECV_BYTES)
        if not data:
            os._exit(0)
        reader.feed(data)
        try:
            while (request := reader.next_frame()) is not None:
                try:
                    reply = handler.handle(request)
                except Exception as exc:  # a handler bug is the call's answer
                    reply = {"__error__": "".join(traceback.format_exception(exc))}
                channel.sendall(encode_frame(reply))
        except FrameError as exc:
            _send_and_exit(channel, {"__error__": f"unreadable request: {exc}"}, code=1)


def probe_layers(
    channel: socket.socket, zygote_pid: int, workdir_base: str, policy: SandboxPolicy
) -> NoReturn:
    """What a session process gets here: harden, report each layer's state, exit."""
    try:
        layers = harden(channel.fileno(), zygote_pid, workdir_base, policy.limits)
    except BaseException as exc:
        _send_and_exit(channel, {"error": f"{type(exc).__name__}: {exc}"}, code=1)
    _send_and_exit(channel, {"layers": layers}, code=0)


def _send_and_exit(channel: socket.socket, body: dict[str, object], code: int) -> NoReturn:
    try:
        channel.sendall(encode_frame(body))
    finally:
        os._exit(code)
