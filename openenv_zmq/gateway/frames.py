"""OpenEnv's ``/ws`` frames, with no I/O: one client text frame in, a typed command out.

:func:`parse_frame` never raises: any text is either a command or the reply OpenEnv's own server
would send for it (an :class:`ErrorReply`, or an :class:`McpReply` for an ``mcp`` frame whose data
is not a JSON-RPC request). The ``*_frame`` encoders write server replies exactly as
openenv 0.10 does (compact JSON; the observation without ``reward`` and ``done``, its ``metadata``
also beside them when not empty). openenv-core 0.3 sent no metadata; its clients ignore the keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import to_json

from openenv_zmq.errors import ActionValidationError
from openenv_zmq.gateway.jsonrpc import JsonRpcRequest, Reply, parse_request


class ErrorCode(StrEnum):
    """OpenEnv's ``WSErrorCode``: the last three close the connection, the others do not."""

    INVALID_JSON = "INVALID_JSON"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    EXECUTION_ERROR = "EXECUTION_ERROR"
    CAPACITY_REACHED = "CAPACITY_REACHED"
    FACTORY_ERROR = "FACTORY_ERROR"
    SESSION_ERROR = "SESSION_ERROR"


@dataclass(frozen=True)
class Reset:
    """``{"type":"reset","data":{...}}``: ``seed`` apart, the other keys are reset kwargs."""

    seed: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """``{"type":"step","data":{...}}``: ``action`` is the data, already valid for the env."""

    action: dict[str, Any]


@dataclass(frozen=True)
class StateRequest:
    """``{"type":"state"}``."""


@dataclass(frozen=True)
class Close:
    """``{"type":"close"}``: end the session, close with 1000, send no reply."""


@dataclass(frozen=True)
class Mcp:
    """``{"type":"mcp","data":<JSON-RPC request>}``: an MCP request on the session's env."""

    request: JsonRpcRequest


@dataclass(frozen=True)
class McpReply:
    """An ``mcp`` frame to send at once: the JSON-RPC error for data that is not a request."""

    reply: Reply

    def frame(self) -> str:
        return mcp_frame(self.reply)


@dataclass(frozen=True)
class ErrorReply:
    """An error frame to send; the connection stays open (parse errors never close it)."""

    code: ErrorCode
    message: str
    extra: dict[str, Any] = field(default_factory=dict)

    def frame(self) -> str:
        return error_frame(self.code, self.message, **self.extra)


Command = Reset | Step | StateRequest | Close | Mcp


class _Frame(BaseModel):
    # OpenEnv's BaseMessage: unknown top-level keys are refused.
    model_config = ConfigDict(extra="forbid")


class _ResetFrame(_Frame):
    type: Literal["reset"] = "reset"
    data: dict[str, Any] = Field(default_factory=dict)


class _StepFrame(_Frame):
    type: Literal["step"] = "step"
    data: dict[str, Any]


class _StateFrame(_Frame):
    type: Literal["state"] = "state"


class _CloseFrame(_Frame):
    type: Literal["close"] = "close"


class _McpFrame(_Frame):
    type: Literal["mcp"] = "mcp"
    data: dict[str, Any]


_FRAMES: dict[str, type[_Frame]] = {
    "reset": _ResetFrame,
    "step": _StepFrame,
    "state": _StateFrame,
    "close": _CloseFrame,
    "mcp": _McpFrame,
}
_OBJECT: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])
# The worker refuses a whole RESET batch over one bad seed, so a seed is checked per session here.
_SEED: TypeAdapter[int | None] = TypeAdapter(Annotated[int, Field(ge=-(2**63), lt=2**63)] | None)


INVALID_MESSAGE = "Invalid message"


def validation_error(exc: ValidationError) -> ErrorReply:
    """OpenEnv's reply to a frame that fails its model: pydantic's error list."""
    # exc.json() is pydantic's JSON-safe rendering of errors() (a ctx may hold an exception).
    errors = json.loads(exc.json())
    return ErrorReply(ErrorCode.VALIDATION_ERROR, INVALID_MESSAGE, {"errors": errors})


def action_error(exc: ActionValidationError) -> ErrorReply:
    """OpenEnv's reply to an action the worker refused: pydantic's error list, as for a frame.

    An array env's action space gives no such list: its message is then the worker's.
    """
    if exc.errors:
        return ErrorReply(ErrorCode.VALIDATION_ERROR, INVALID_MESSAGE, {"errors": exc.errors})
    return ErrorReply(ErrorCode.VALIDATION_ERROR, str(exc), {"errors": []})


def parse_frame(text: str) -> Command | ErrorReply | McpReply:
    """The command in one client text frame, or the error reply OpenEnv sends for it.

    A step's data is not validated here: the worker validates every action against the env's
    model and a refused one comes back as an ``ActionValidationError`` carrying pydantic's
    error list (see :func:`action_error`).
    """
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        return ErrorReply(ErrorCode.INVALID_JSON, f"Invalid JSON: {exc}")
    try:
        frame = _OBJECT.validate_python(raw)
        kind = frame.get("type", "")
        model = _FRAMES.get(kind) if isinstance(kind, str) else None
        if model is None:
            return ErrorReply(ErrorCode.UNKNOWN_TYPE, f"Unknown message type: {kind}")
        parsed = model.model_validate(frame)
        if isinstance(parsed, _ResetFrame):
            kwargs = dict(parsed.data)
            return Reset(_SEED.validate_python(kwargs.pop("seed", None)), kwargs)
        if isinstance(parsed, _StepFrame):
            return Step(parsed.data)
        if isinstance(parsed, _McpFrame):
            request = parse_request(parsed.data)
            return Mcp(request) if isinstance(request, JsonRpcRequest) else McpReply(request)
        return StateRequest() if isinstance(parsed, _StateFrame) else Close()
    except ValidationError as exc:
        return validation_error(exc)


def _dumps(frame: dict[str, Any]) -> str:
    # pydantic's encoder, as OpenEnv's model_dump_json: compact, non-ASCII kept as is.
    return to_json(frame).decode()


def observation_frame(observation: BaseModel | dict[str, Any]) -> str:
    """The reply to reset/step: ``{"type":"observation","data":{observation, reward, done}}``,
    and ``metadata`` after ``done`` when the observation's is not empty."""
    fields = observation.model_dump() if isinstance(observation, BaseModel) else dict(observation)
    reward = fields.pop("reward", None)
    done = fields.pop("done", False)
    data = {"observation": fields, "reward": reward, "done": done}
    metadata = fields.get("metadata")
    if metadata:
        data["metadata"] = metadata
    return _dumps({"type": "observation", "data": data})


def mcp_frame(reply: Reply) -> str:
    """The reply to an ``mcp`` frame: ``{"type":"mcp","data":<JSON-RPC response>}``."""
    return _dumps({"type": "mcp", "data": reply})


def state_frame(state: BaseModel | dict[str, Any]) -> str:
    """The reply to state: every state field, extras included."""
    data = state.model_dump() if isinstance(state, BaseModel) else dict(state)
    return _dumps({"type": "state", "data": data})


def error_frame(code: ErrorCode, message: str, **extra: Any) -> str:
    """``{"type":"error","data":{"message","code",...extra}}``."""
    return _dumps({"type": "error", "data": {"message": message, "code": code.value, **extra}})
