"""``python -m bench.faults.holder ADDRESS NUM_ENVS``: a client the soak run kills.

It makes ``NUM_ENVS`` echo envs, resets them, prints ``holding`` and steps them until it is
killed (or for at most :data:`MAX_SECONDS`, so that a holder nobody kills ends by itself).
"""

from __future__ import annotations

import sys
import time

from echo_env import EchoAction

from openenv_zmq import BatchClient

MAX_SECONDS = 120.0
MAX_STEPS = 1_000_000


def hold(address: str, num_envs: int) -> None:
    with BatchClient(address, timeout=30.0) as client:
        envs = client.make("echo", num_envs=num_envs)
        envs.reset()
        print("holding", flush=True)
        actions = [EchoAction(message="held")] * num_envs
        deadline = time.monotonic() + MAX_SECONDS
        for _ in range(MAX_STEPS):
            if time.monotonic() > deadline:
                break
            envs.step(actions)


if __name__ == "__main__":
    hold(sys.argv[1], int(sys.argv[2]))
