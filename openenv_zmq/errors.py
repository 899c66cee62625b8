"""The one exception tree of openenv-zmq.

```
OpenEnvZmqError
├── ProtocolError               frames that do not decode (malformed, wrong version, unknown op)
│   └── MessageTooLarge         over the configured size limit
├── EnvNotFound                 an env name or ``module:Class`` that resolves to nothing
├── SandboxError                a contained-session layer the operator requires cannot be had
├── WorkersFailing              every worker the broker starts keeps dying as it starts: it stops
├── ProviderUnavailable         no Docker engine, image or env in it; no ray package or cluster
├── CurveKeyError               a CURVE key file or folder that is missing, malformed or taken
├── ClientError                 misuse detected in this process before anything is sent
│   ├── ClosedError             stepping a closed client or env group
│   ├── BatchSizeMismatch       number of actions/seeds/kwargs differs from number of env ids
│   ├── EnvIdsNotInGroup        env ids that do not belong to the group
│   ├── AlreadyPendingCall      send() while the same env ids are still in flight
│   └── NoPendingCall           recv() with nothing in flight
├── NoFreeSession               every session of a session pool stayed in use past the timeout
├── TransportError              the request did not get an answer
│   ├── BrokerUnreachable       no broker answered within the connect timeout
│   ├── BrokerLost              the broker stopped answering while a call waited
│   └── RequestTimeout          a sent request got no reply within its timeout
├── RemoteError                 a whole request refused by the broker or a worker
│   ├── NoWorkerAvailable       no live worker hosts the env kind, or all are full
│   ├── TooManyInFlight         the client exceeded its in-flight limit at the broker
│   ├── NotOwner                the env group belongs to another client session
│   ├── LeaseExpired            the client session's lease ran out; its groups were closed
│   ├── UnknownSession          the broker issued no such client session (it restarted)
│   ├── QuotaExceeded           more env slots than the broker allows one client session
│   └── EnvServerError          an error frame from an OpenEnv server (``.code``, ``.data``)
└── EnvError                    one env instance failed; travels per env in ``BatchResult.errors``
    ├── EnvExecutionError       the env's own code raised
    ├── ActionValidationError   the action failed the env's pydantic model
    ├── NeedsReset              step() before the first reset(), or after a StepTimeout
    ├── StepTimeout             the step outran its deadline; the instance was discarded
    ├── EnvBusy                 the env is still answering an earlier request
    ├── EnvNotOnWorker          the worker it was sent to hosts no env with this id
    ├── WorkerLost              the worker died while the request was in flight
    ├── SessionLost             the env lived on a worker that died; reset() re-places it
    └── SessionCrashed          the env's contained process died; a fresh one replaced it
```

Errors cross the wire as ``(type name, message, traceback)`` and are rebuilt here by name with
:func:`error_from_wire`, so a trainer can ``except WorkerLost`` exactly as it would locally. A
per-env error may carry a map of ``details`` too (pydantic's error list for a refused action).
"""

from __future__ import annotations

from typing import Any


class OpenEnvZmqError(Exception):
    """Base of every error raised by openenv-zmq."""


class ProtocolError(OpenEnvZmqError):
    """Frames that are not a valid message of this protocol version."""


class MessageTooLarge(ProtocolError):
    """A message (or its header) is over the configured size limit."""


class EnvNotFound(OpenEnvZmqError):
    """An env name or ``module:Class`` spec that resolves to no environment class."""


class SandboxError(OpenEnvZmqError):
    """A layer of the contained-session sandbox that is required cannot be set up here (the
    message names the layer and why), or the sandbox's own processes failed."""


class WorkersFailing(OpenEnvZmqError):
    """Every worker the broker starts itself died right after starting, too many times in a
    row; the broker stops rather than restart them forever."""


class ProviderUnavailable(OpenEnvZmqError):
    """The engine that starts the broker's workers cannot: no Docker engine answers, the image
    is missing or lacks an env, no Ray cluster is at the address, the ``docker`` or ``ray``
    package is not installed. The message names what is missing and how to get it."""


class CurveKeyError(OpenEnvZmqError):
    """A CURVE key file or key folder that is missing or malformed, or a key that would be
    overwritten; the message names the file."""


class ClientError(OpenEnvZmqError):
    """Misuse of the client API, detected before anything is sent."""


class ClosedError(ClientError):
    """The client or env group is closed."""


class BatchSizeMismatch(ClientError):
    """A per-env argument (actions, seeds, kwargs) has the wrong length."""


class EnvIdsNotInGroup(ClientError):
    """Env ids that are not part of the env group."""


class AlreadyPendingCall(ClientError):
    """``send()`` named env ids whose previous call has not been received yet."""


class NoPendingCall(ClientError):
    """``recv()`` was called with nothing in flight."""


class NoFreeSession(OpenEnvZmqError):
    """No session of a session pool came free within the wait's timeout; nothing was sent.
    Give the pool more sessions, or return them sooner (``close()``, or the end of ``with``)."""


class TransportError(OpenEnvZmqError):
    """A request got no answer."""


class BrokerUnreachable(TransportError):
    """No broker answered at the address within the connect timeout."""


class BrokerLost(TransportError):
    """The broker stopped answering the client's heartbeats while a call waited; the call's
    requests are forgotten. Calls made once a broker answers at the address again work."""


class RequestTimeout(TransportError):
    """A request was sent but its reply did not arrive in time."""


class RemoteError(OpenEnvZmqError):
    """A whole request was refused by the broker or a worker."""

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


class NoWorkerAvailable(RemoteError):
    """No live worker hosts the requested env kind, or every such worker is full."""


class TooManyInFlight(RemoteError):
    """The client has more requests in flight at the broker than its limit allows."""


class NotOwner(RemoteError):
    """The request named an env group, or env ids, of another client session; nothing was done
    to them."""


class LeaseExpired(RemoteError):
    """The client session sent nothing, not even a heartbeat, for longer than the broker's
    lease: the broker closed its env groups and freed their slots. Make the envs again."""


class UnknownSession(RemoteError):
    """The broker issued no such client session: it restarted since (a client opens a new
    session and sends again, as nothing was done)."""


class QuotaExceeded(RemoteError):
    """The env slots asked for would take the client session over the broker's
    ``--max-envs-per-client``."""


class EnvServerError(RemoteError):
    """An ``{"type":"error"}`` frame from an OpenEnv server; ``data`` is the frame's ``data``."""

    def __init__(self, code: str, message: str, data: dict[str, Any]) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.data = data


class EnvError(OpenEnvZmqError):
    """One env instance failed. ``env_id``, the remote traceback and ``details`` travel with it."""

    def __init__(
        self,
        message: str,
        env_id: int = -1,
        remote_traceback: str = "",
        *,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.env_id = env_id
        self.remote_traceback = remote_traceback
        self.details: dict[str, Any] = details or {}

    @property
    def type_name(self) -> str:
        return type(self).__name__


class EnvExecutionError(EnvError):
    """The environment's own code raised; the original type name is kept in ``original_type``."""

    def __init__(
        self,
        message: str,
        env_id: int = -1,
        remote_traceback: str = "",
        original_type: str = "",
        *,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, env_id, remote_traceback, details=details)
        self.original_type = original_type


class ActionValidationError(EnvError):
    """The action failed the env's pydantic model; the message is pydantic's."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Pydantic's error list (JSON-safe, as ``ValidationError.json()`` renders it), when the
        action failed a model; empty when it failed an array env's action space."""
        errors: list[dict[str, Any]] = self.details.get("errors", [])
        return errors


class NeedsReset(EnvError):
    """The env was stepped before it was reset."""


class StepTimeout(EnvError):
    """The step did not return within its deadline. The worker abandoned it and discarded the
    instance (a thread cannot be stopped); the env answers :class:`NeedsReset` until ``reset()``
    builds a fresh one."""


class EnvBusy(EnvError):
    """The env is still answering an earlier reset or step (requests for one env must not
    overlap)."""


class EnvNotOnWorker(EnvError):
    """The worker hosts no env with this id: it was closed, or made by an earlier broker at this
    address (ids are never valid across broker restarts); make the envs again."""


class WorkerLost(EnvError):
    """The worker hosting the env died while a request for it was in flight."""


class SessionLost(EnvError):
    """The env lived on a worker that died; ``reset()`` places it on a live worker."""


class SessionCrashed(EnvError):
    """The contained process running the env's session died (a crash, the memory or CPU limit,
    a kill): the message names how. The env replaced it with a fresh process, so what the
    episode had built up is gone; the env answers on, as after a reset."""


_REMOTE_TYPES: dict[str, type[RemoteError]] = {
    cls.__name__: cls
    for cls in (
        RemoteError,
        NoWorkerAvailable,
        TooManyInFlight,
        NotOwner,
        LeaseExpired,
        UnknownSession,
        QuotaExceeded,
    )
}
_ENV_TYPES: dict[str, type[EnvError]] = {
    cls.__name__: cls
    for cls in (
        EnvError,
        EnvExecutionError,
        ActionValidationError,
        NeedsReset,
        StepTimeout,
        EnvBusy,
        EnvNotOnWorker,
        WorkerLost,
        SessionLost,
        SessionCrashed,
    )
}
_LOCAL_TYPES: dict[str, type[OpenEnvZmqError]] = {
    cls.__name__: cls for cls in (ProtocolError, MessageTooLarge, EnvNotFound)
}


def is_env_error_name(type_name: str) -> bool:
    """Whether ``type_name`` is a per-env failure (``WorkerLost``) rather than a request failure."""
    return type_name in _ENV_TYPES


def env_error_from_wire(
    type_name: str,
    message: str,
    traceback: str,
    env_id: int,
    details: dict[str, Any] | None = None,
) -> EnvError:
    """Rebuild a per-env error; an unknown name is an exception from the env's own code."""
    cls = _ENV_TYPES.get(type_name)
    if cls is None:
        return EnvExecutionError(
            f"{type_name}: {message}", env_id, traceback, type_name, details=details
        )
    return cls(message, env_id, traceback, details=details)


def error_from_wire(type_name: str, message: str, traceback: str = "") -> OpenEnvZmqError:
    """Rebuild a whole-request error sent by the broker or a worker."""
    remote = _REMOTE_TYPES.get(type_name)
    if remote is not None:
        return remote(message, traceback)
    local = _LOCAL_TYPES.get(type_name)
    if local is not None:
        return local(message)
    return RemoteError(f"{type_name}: {message}", traceback)
