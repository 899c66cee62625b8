"""The exception tree: the docstring drawing is the truth; wire names rebuild the right class."""

from __future__ import annotations

import inspect
import re

import pytest

from openenv_zmq import errors
from openenv_zmq.errors import (
    ClientError,
    EnvError,
    EnvExecutionError,
    OpenEnvZmqError,
    RemoteError,
    TransportError,
    env_error_from_wire,
    error_from_wire,
    is_env_error_name,
)

TRACEBACK = 'Traceback (most recent call last):\n  File "env.py", line 9\nKeyError: 3\n'
DRAWING_LINE = re.compile(r"^(?P<indent>(?:│   |    )*)(?:├── |└── )(?P<name>\w+)\s")


def drawn_parents() -> dict[str, str | None]:
    """Each class drawn in the module docstring, mapped to the class it hangs from."""
    assert errors.__doc__ is not None
    block = errors.__doc__.split("```")[1].strip("\n").splitlines()
    root = block[0].strip()
    parents: dict[str, str | None] = {root: None}
    path = [root]
    for line in block[1:]:
        match = DRAWING_LINE.match(line)
        assert match, f"unreadable line in the drawing: {line!r}"
        depth = len(match["indent"]) // 4 + 1
        del path[depth:]
        assert len(path) == depth, f"{match['name']} is indented under nothing"
        parents[match["name"]] = path[-1]
        path.append(match["name"])
    return parents


def error_classes() -> dict[str, type[OpenEnvZmqError]]:
    return {
        name: cls
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, OpenEnvZmqError) and cls.__module__ == errors.__name__
    }


TREE = drawn_parents()
CLASSES = error_classes()

REQUEST_ERRORS = [
    "RemoteError",
    "NoWorkerAvailable",
    "TooManyInFlight",
    "NotOwner",
    "LeaseExpired",
    "UnknownSession",
    "QuotaExceeded",
]
"""Sent in ``ERROR`` by the broker or a worker to refuse a whole request."""
LOCAL_ERRORS_SENT_AS_REPLIES = ["ProtocolError", "MessageTooLarge", "EnvNotFound"]
"""Raised on one side and sent to the other as the reason for an ``ERROR``."""
ENV_ERRORS = [name for name, cls in CLASSES.items() if issubclass(cls, EnvError)]
NEVER_SENT = [
    "OpenEnvZmqError",
    "EnvServerError",
    "SandboxError",
    "WorkersFailing",
    "ProviderUnavailable",
    "CurveKeyError",
    "NoFreeSession",
] + [name for name, cls in CLASSES.items() if issubclass(cls, ClientError | TransportError)]
"""Raised by the client itself, before sending or for want of an answer, or (EnvServerError) from
an OpenEnv server's JSON error frame rather than this protocol, or (SandboxError) by a worker's
sandbox at its start, or (WorkersFailing, ProviderUnavailable) by the broker's own process as it
starts or stops its workers, or (CurveKeyError) by whichever process reads or writes its own key
files, or (NoFreeSession) by a session pool waiting for one of its own sessions."""


def test_drawing_has_the_expected_shape() -> None:
    assert TREE["OpenEnvZmqError"] is None
    assert TREE["MessageTooLarge"] == "ProtocolError"
    assert TREE["SessionLost"] == "EnvError"


def test_drawing_names_every_class_and_nothing_else() -> None:
    assert set(TREE) == set(CLASSES)


@pytest.mark.parametrize("name", sorted(TREE))
def test_class_hangs_where_the_drawing_puts_it(name: str) -> None:
    cls = CLASSES[name]
    parent = TREE[name]
    assert cls.__bases__ == ((CLASSES[parent],) if parent else (Exception,))


def test_every_class_has_a_place_on_the_wire_or_off_it() -> None:
    groups = [REQUEST_ERRORS, LOCAL_ERRORS_SENT_AS_REPLIES, ENV_ERRORS, NEVER_SENT]
    assert sorted(name for group in groups for name in group) == sorted(CLASSES)


@pytest.mark.parametrize("name", REQUEST_ERRORS)
def test_request_errors_are_rebuilt_with_their_traceback(name: str) -> None:
    error = error_from_wire(name, "no live worker hosts 'echo'", TRACEBACK)
    assert type(error) is CLASSES[name]
    assert isinstance(error, RemoteError)
    assert str(error) == "no live worker hosts 'echo'"
    assert error.remote_traceback == TRACEBACK


@pytest.mark.parametrize("name", LOCAL_ERRORS_SENT_AS_REPLIES)
def test_local_errors_are_rebuilt(name: str) -> None:
    error = error_from_wire(name, "unknown op 99")
    assert type(error) is CLASSES[name]
    assert str(error) == "unknown op 99"


@pytest.mark.parametrize("name", ENV_ERRORS)
def test_env_errors_are_rebuilt_per_env(name: str) -> None:
    error = env_error_from_wire(name, "worker 2 died", TRACEBACK, 17)
    assert type(error) is CLASSES[name]
    assert (str(error), error.env_id, error.remote_traceback) == ("worker 2 died", 17, TRACEBACK)
    assert error.type_name == name


@pytest.mark.parametrize("name", ENV_ERRORS)
def test_env_error_survives_a_trip_through_its_wire_fields(name: str) -> None:
    sent = CLASSES[name]("step() before reset()", 5, TRACEBACK)
    assert isinstance(sent, EnvError)
    got = env_error_from_wire(sent.type_name, str(sent), sent.remote_traceback, sent.env_id)
    assert (type(got), str(got), got.env_id, got.remote_traceback) == (
        type(sent),
        str(sent),
        sent.env_id,
        sent.remote_traceback,
    )


@pytest.mark.parametrize("name", ["ValueError", "KeyError", "MyEnvCrashed", "ProtocolError"])
def test_unknown_env_error_names_are_the_envs_own_exceptions(name: str) -> None:
    error = env_error_from_wire(name, "boom", TRACEBACK, 3)
    assert type(error) is EnvExecutionError
    assert error.original_type == name
    assert str(error) == f"{name}: boom"
    assert (error.env_id, error.remote_traceback) == (3, TRACEBACK)


@pytest.mark.parametrize("name", ["KeyError", "SomethingNew", ""])
def test_unknown_request_error_names_become_remote_errors(name: str) -> None:
    error = error_from_wire(name, "boom", TRACEBACK)
    assert type(error) is RemoteError
    assert str(error) == f"{name}: boom"
    assert error.remote_traceback == TRACEBACK


def test_traceback_is_optional() -> None:
    error = error_from_wire("NoWorkerAvailable", "full")
    assert isinstance(error, RemoteError)
    assert error.remote_traceback == ""
    assert EnvError("m").env_id == -1


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_env_error_names_are_told_apart(name: str) -> None:
    assert is_env_error_name(name) == (name in ENV_ERRORS)


def test_env_error_name_is_not_an_unknown_name() -> None:
    assert not is_env_error_name("ValueError")
