"""The client of test_many_hosts, run inside a network namespace: JSON commands in, JSON out.

The test process stays in the root namespace, from where no broker address is reachable, so it
runs this with ``ip netns exec NS python -m tests.integration.many_hosts_client ADDRESS BUNDLE``
and drives it through its pipes: one command a line on stdin, one answer a line on stdout
(``{"raised": "..."}`` when the call raised). Commands (``op`` and its arguments):

- ``make {num_envs}``: make that many echo envs, the one group the other commands act on;
- ``reset {env_ids?}``, ``step {message, env_ids?}``: a :func:`result` of the call;
- ``status``: the broker's status;
- ``wait_for_workers {count, within}``: the live workers once ``count`` have joined (within
  ``within`` seconds).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from echo_env import EchoAction

from openenv_zmq import BatchClient, BatchResult, EnvGroup

CALL_TIMEOUT = 30.0
"""Longer than any wait of the test: a call that does not return is the test's to time out."""


def result(r: BatchResult) -> dict[str, Any]:
    """A batch result as JSON: env ids, each failed env's error type, the echoed messages, and
    ``at``, the ``time.monotonic()`` it returned at (one clock for every process of the host)."""
    return {
        "env_ids": r.env_ids.tolist(),
        "errors": {str(env_id): type(error).__name__ for env_id, error in r.errors.items()},
        "echoed": [None if o is None else o.echoed_message for o in r.observations],
        "at": time.monotonic(),
    }


def answer(client: BatchClient, group: list[EnvGroup], command: dict[str, Any]) -> Any:
    op = command["op"]
    if op == "make":
        group[:] = [client.make("echo", num_envs=command["num_envs"])]
        return {"env_ids": group[0].env_ids.tolist()}
    if op == "reset":
        return result(group[0].reset(seed=0, env_ids=command.get("env_ids")))
    if op == "step":
        env_ids = command.get("env_ids") or group[0].env_ids.tolist()
        actions = [EchoAction(message=command["message"])] * len(env_ids)
        return result(group[0].step(actions, env_ids=env_ids))
    if op == "status":
        return client.status()
    if op == "wait_for_workers":
        return client.wait_for_workers(command["count"], timeout=command["within"])
    raise ValueError(f"unknown op {op!r}")


def main(address: str, bundle: str) -> None:
    with BatchClient(
        address, curve_dir=bundle, connect_timeout=CALL_TIMEOUT, timeout=CALL_TIMEOUT
    ) as client:
        group: list[EnvGroup] = []
        print(json.dumps({"connected": address}), flush=True)
        for line in sys.stdin:
            try:
                said = answer(client, group, json.loads(line))
            except Exception as exc:
                said = {"raised": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(said), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
