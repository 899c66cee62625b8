"""A local multi-node Ray cluster on 127.0.0.1, made with Ray's own test utility, for the Ray
provider's tests and ``bench.ray_start``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

RAY_ENV = {
    # Ray 2.5x turns token authentication on by default for a cluster it starts, and keeps the
    # token in ~/.ray: this cluster lives on loopback for one test module or bench run, so it is
    # off, said explicitly rather than left to the version's default.
    "RAY_AUTH_MODE": "disabled",
    # Ray replaces 127.0.0.1 in an address it connects to with this host's own interface
    # address, where no node of this cluster listens; with "cluster mode" off (the variable's
    # name is about macOS and Windows, where it is off by default) it keeps loopback.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # No usage reports: seconds of start-up and CPU on 2 cores.
    "RAY_USAGE_STATS_ENABLED": "0",
}


@contextlib.contextmanager
def local_ray_cluster(nodes: int, cpus_per_node: float, object_store_mb: int = 80) -> Iterator[Any]:
    """A running :class:`ray.cluster_utils.Cluster`: a head with no CPUs (no worker lands on
    it) and ``nodes`` nodes of ``cpus_per_node`` CPUs, every one bound to 127.0.0.1. While it
    runs, :data:`RAY_ENV` is in this process's environment (processes started meanwhile inherit
    it); both are undone on the way out. Ray must not have been imported before: it reads those
    variables then."""
    saved = {name: os.environ.get(name) for name in RAY_ENV}
    os.environ.update(RAY_ENV)
    try:
        import ray
        from ray.cluster_utils import Cluster

        node_args: dict[str, Any] = {
            "node_ip_address": "127.0.0.1",
            "object_store_memory": object_store_mb * 2**20,
        }
        cluster = Cluster(
            initialize_head=True,
            head_node_args={**node_args, "num_cpus": 0, "include_dashboard": False},
        )
        try:
            for _ in range(nodes):
                cluster.add_node(wait=False, num_cpus=cpus_per_node, **node_args)
            cluster.wait_for_nodes()
            yield cluster
        finally:
            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()  # type: ignore[no-untyped-call]
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
