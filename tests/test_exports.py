"""The public names of ``openenv_zmq`` are a contract: adding or removing one is a decision."""

from __future__ import annotations

import importlib

import openenv_zmq

PUBLIC_NAMES = [
    "Action",
    "AsyncBatchClient",
    "AsyncEnvGroup",
    "AutoresetMode",
    "BatchClient",
    "BatchResult",
    "Box",
    "Discrete",
    "EnvClient",
    "EnvGroup",
    "EnvServerError",
    "Environment",
    "Observation",
    "State",
    "StepResult",
    "SyncEnvClient",
    "VectorEnvironment",
]


def test_all_is_exactly_the_public_names_sorted() -> None:
    assert openenv_zmq.__all__ == PUBLIC_NAMES
    assert sorted(PUBLIC_NAMES) == PUBLIC_NAMES


def test_every_public_name_is_importable() -> None:
    package = importlib.import_module("openenv_zmq")
    for name in PUBLIC_NAMES:
        assert getattr(package, name) is not None, name


def test_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from openenv_zmq import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == PUBLIC_NAMES
