"""OpenEnv's HTTP routes: metadata, schemas, stateless reset/step/state, and ``/mcp``.

As in OpenEnv, ``/reset``, ``/step`` and ``/state`` keep no episode between requests: each one
borrows a free env slot from the :class:`SlotPool` (the ``/ws`` sessions' pool), starts a
fresh episode on it and gives it back. Request and response models mirror openenv-core's, so
bad bodies get FastAPI's 422 and ``/openapi.json`` documents them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from openenv_zmq.errors import ActionValidationError, EnvNotFound, OpenEnvZmqError
from openenv_zmq.gateway.frames import observation_frame, state_frame
from openenv_zmq.gateway.jsonrpc import JsonRpcRequest, Reply, parse_body
from openenv_zmq.gateway.mcp import McpHandler
from openenv_zmq.gateway.sessions import capacity_message
from openenv_zmq.pool.slots import SlotPool
from openenv_zmq.registry import EnvTypes, env_types, overrides, resolve_env

log = logging.getLogger(__name__)

MAX_SEED = 2**63 - 1
"""The worker refuses a whole RESET batch over one out-of-range seed, so it is refused here."""


class ResetRequest(BaseModel):
    """``POST /reset``: keys other than ``seed`` are passed to the env's ``reset`` as kwargs."""

    model_config = ConfigDict(extra="allow")

    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    episode_id: str | None = Field(default=None, max_length=255)


class StepRequest(BaseModel):
    """``POST /step``. ``timeout_s`` is the step's deadline (given to an env that takes it);
    ``request_id`` and extra keys are validated as OpenEnv does but not passed on."""

    model_config = ConfigDict(extra="allow")

    action: dict[str, Any]
    timeout_s: float | None = Field(default=None, gt=0)
    request_id: str | None = Field(default=None, max_length=255)


class StepResponse(BaseModel):
    """The reply to ``/reset`` and ``/step``, as openenv 0.10's: the observation minus reward and
    done, and its metadata again at the top (``null`` when empty)."""

    observation: dict[str, Any]
    reward: float | None = None
    done: bool = False
    metadata: dict[str, Any] | None = None


class EnvironmentMetadata(BaseModel):
    """OpenEnv's ``EnvironmentMetadata``, with its defaults."""

    name: str
    description: str
    readme_content: str | None = None
    version: str | None = None
    author: str | None = None
    documentation_url: str | None = None


class SchemaResponse(BaseModel):
    """The JSON schemas of the env's Action, Observation and State models."""

    action: dict[str, Any]
    observation: dict[str, Any]
    state: dict[str, Any]


def environment_metadata(env: str) -> EnvironmentMetadata:
    """``env``'s metadata: what its own ``get_metadata()`` says, as OpenEnv's server answers,
    when the class has one and this process can import it; else its name and the first line of
    its class docstring (OpenEnv's ``"<Class> environment"`` without one)."""
    try:
        cls = resolve_env(env)
    except EnvNotFound:
        return EnvironmentMetadata(name=env, description=f"{env} environment")
    own = _own_metadata(cls)
    if own is not None:
        return own
    doc = (cls.__doc__ or "").strip()
    description = doc.splitlines()[0] if doc else f"{cls.__name__} environment"
    return EnvironmentMetadata(name=env, description=description)


@cache
def _own_metadata(cls: type) -> EnvironmentMetadata | None:
    """``get_metadata()`` of an instance, as OpenEnv's server asks a fresh env for it, when
    ``cls`` defines its own; ``None`` when it does not, or when that fails (logged)."""
    if not overrides(cls, "get_metadata"):
        return None
    try:
        env = cls()
        try:
            metadata = env.get_metadata()
        finally:
            close = getattr(env, "close", None)
            if close is not None:
                close()
        fields = metadata.model_dump() if isinstance(metadata, BaseModel) else dict(metadata)
        return EnvironmentMetadata.model_validate(fields)
    except Exception:
        log.exception("%s.get_metadata() failed; /metadata falls back", cls.__qualname__)
        return None


def environment_types(env: str) -> EnvTypes:
    """``env``'s models as OpenEnv serves them; a 503 when only the workers can import it."""
    try:
        return env_types(resolve_env(env))
    except EnvNotFound as exc:
        raise HTTPException(
            503, f"the schemas of {env!r} are unknown: the gateway cannot import it ({exc})"
        ) from exc


def _frame_data(frame: str) -> dict[str, Any]:
    # The /ws frame encoders define the reply shapes; HTTP sends the same data unwrapped.
    data: dict[str, Any] = json.loads(frame)["data"]
    return data


@asynccontextmanager
async def borrowed_slot(pool: SlotPool) -> AsyncIterator[int]:
    """A free slot for one request, given back after it; env failures become HTTP errors:
    422 for an action the worker refused, 503 when every slot is taken, 500 otherwise."""
    slot = pool.acquire()
    if slot is None:
        raise HTTPException(503, capacity_message(pool))
    try:
        yield slot
    except ActionValidationError as exc:
        # pydantic's error list, as FastAPI's own 422 for a bad body
        raise HTTPException(422, exc.errors or str(exc)) from exc
    except OpenEnvZmqError as exc:
        raise HTTPException(500, {"type": type(exc).__name__, "message": str(exc)}) from exc
    finally:
        pool.release(slot)


def http_router(env: str) -> APIRouter:
    """OpenEnv's HTTP routes for ``env``; the pool is read from ``app.state.pool``, the MCP
    handler from ``app.state.mcp``."""
    router = APIRouter()

    @router.get("/metadata", response_model=EnvironmentMetadata)
    async def metadata() -> EnvironmentMetadata:
        return environment_metadata(env)

    @router.get("/schema", response_model=SchemaResponse)
    async def schema() -> SchemaResponse:
        types = environment_types(env)
        return SchemaResponse(
            action=types.action.model_json_schema(),
            observation=types.observation.model_json_schema(),
            state=types.state.model_json_schema(),
        )

    @router.post("/reset", response_model=StepResponse)
    async def reset(
        request: Request, body: Annotated[ResetRequest, Body(default_factory=ResetRequest)]
    ) -> dict[str, Any]:
        kwargs = body.model_dump(exclude_unset=True)
        seed = kwargs.pop("seed", None)
        pool: SlotPool = request.app.state.pool
        async with borrowed_slot(pool) as slot:
            return _frame_data(observation_frame(await pool.reset(slot, seed, kwargs)))

    @router.post("/step", response_model=StepResponse)
    async def step(request: Request, body: StepRequest) -> dict[str, Any]:
        pool: SlotPool = request.app.state.pool
        async with borrowed_slot(pool) as slot:
            # the pool resets a slot before its first step, so each request is a new episode
            observation = await pool.step(slot, body.action, body.timeout_s)
            return _frame_data(observation_frame(observation))

    @router.get("/state")
    async def state(request: Request) -> dict[str, Any]:
        pool: SlotPool = request.app.state.pool
        async with borrowed_slot(pool) as slot:
            return _frame_data(state_frame(await pool.state(slot)))

    @router.post("/mcp")
    async def mcp(request: Request) -> Reply:
        # always 200, as OpenEnv's: errors are JSON-RPC errors
        parsed = parse_body(await request.body())
        if not isinstance(parsed, JsonRpcRequest):
            return parsed
        handler: McpHandler = request.app.state.mcp
        return await handler.handle(parsed)

    return router
