"""The public names of ``openenv_zmq`` are a contract: adding or removing one is a decision."""

from __future__ import annotations

import importlib

import openenv_zmq

PUBLIC_NAMES = [
    "Action",
    "AsyncBatchClient",
    "AsyncEnvGroup",
    "AsyncSessionPool",
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
    "SessionPool",
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


def test_every_public_method_and_property_has_a_docstring() -> None:
    undocumented = []
    for name in openenv_zmq.__all__:
        public = getattr(openenv_zmq, name)
        if not isinstance(public, type):
            continue
        ours = [cls for cls in public.__mro__ if cls.__module__.startswith("openenv_zmq")]
        members = {k: v for cls in reversed(ours) for k, v in vars(cls).items()}  # own ones win
        for attribute, member in members.items():
            function = member.fget if isinstance(member, property) else member
            if attribute.startswith("_") or not callable(function):
                continue
            if not (function.__doc__ or "").strip():
                undocumented.append(f"{name}.{attribute}")
    assert sorted(set(undocumented)) == []
