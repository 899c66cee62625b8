"""Finding envs by name, and the models an env speaks.

A name is one of: a name published in the ``openenv_zmq.envs`` entry point group
(``echo = "echo_env.server.echo_environment:EchoEnvironment"``), a ``module:Class`` spec, or a
prefixed name (``gym:CartPole-v1``) whose prefix :data:`PREFIXES` maps to a factory. Nothing here
imports an env interface: loading a type by its ``module:Class`` path needs only this module.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import typing
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel

from openenv_zmq.errors import EnvNotFound
from openenv_zmq.types import Action, Observation, State

ENTRY_POINT_GROUP = "openenv_zmq.envs"
PREFIXES: dict[str, str] = {"gym:": "openenv_zmq.worker.gymnasium:gymnasium_env"}
"""Name prefix -> ``module:function`` that turns the whole name into an env class."""


@dataclass(frozen=True)
class EnvTypes:
    """The pydantic models an env speaks."""

    action: type[BaseModel]
    observation: type[BaseModel]
    state: type[BaseModel]


def type_path(cls: type) -> str:
    """``module:qualname``, the form :func:`import_object` reads back."""
    return f"{cls.__module__}:{cls.__qualname__}"


def import_object(path: str) -> Any:
    """Import ``package.module:Attr.Nested``; raises :class:`EnvNotFound` with the reason."""
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname:
        raise EnvNotFound(f"{path!r} is not of the form 'module:Class'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise EnvNotFound(f"cannot import module {module_name!r} for {path!r}: {exc}") from exc
    except Exception as exc:  # the module's own code failed: a syntax error, a bad import-time call
        raise EnvNotFound(
            f"importing module {module_name!r} for {path!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    for attr in qualname.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise EnvNotFound(f"module {module_name!r} has no attribute {qualname!r}") from None
    return obj


def add_app_dir(path: str) -> None:
    """Make the modules in folder ``path`` importable by name, ahead of installed ones: uvicorn's
    ``--app-dir``, for an env in the user's own folder. The one edit of ``sys.path`` anywhere."""
    if path not in sys.path:
        sys.path.insert(0, path)


def registered_envs() -> dict[str, str]:
    """Env names published through the entry point group, mapped to their ``module:Class``."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


@cache
def resolve_env(name: str) -> type:
    """The env class for a registered name, a prefixed name or a ``module:Class`` spec.

    Raises :class:`EnvNotFound` naming the registered envs when nothing matches.
    """
    for prefix, factory in PREFIXES.items():
        if name.startswith(prefix):
            prefixed: type = import_object(factory)(name)
            return prefixed
    if ":" in name:
        cls = import_object(name)
    else:
        target = registered_envs().get(name)
        if target is None:
            known = ", ".join(sorted(registered_envs())) or "none"
            raise EnvNotFound(
                f"no env named {name!r} (registered: {known}); use 'module:Class' for others"
            )
        cls = import_object(target)
    if not isinstance(cls, type) or not all(
        hasattr(cls, attr) for attr in ("reset", "step", "state")
    ):
        raise EnvNotFound(f"{name!r} is not an environment class (needs reset, step and state)")
    return cls


def _as_model(candidate: Any) -> type[BaseModel] | None:
    if isinstance(candidate, type) and issubclass(candidate, BaseModel):
        return candidate
    return None


def _generic_args(cls: type, bound: dict[Any, Any] | None = None) -> tuple[Any, ...]:
    """The ``Environment[...]`` arguments of ``cls``, with type variables bound by subclasses.

    ``class Concrete(Base[MoveAction])`` over ``class Base(Environment[ActT, Obs, St])`` gives
    ``(MoveAction, Obs, St)``.
    """
    bound = bound or {}
    for base in cls.__dict__.get("__orig_bases__", cls.__bases__):
        origin = typing.get_origin(base) or base
        args = tuple(bound.get(arg, arg) for arg in typing.get_args(base))
        if not isinstance(origin, type) or origin is object:
            continue
        if origin.__name__ == "Environment" and args:
            return args
        parameters = getattr(origin, "__parameters__", ())
        found = _generic_args(origin, dict(zip(parameters, args, strict=False)))
        if found:
            return found
    return ()


_BASES = ("Action", "Observation", "State")


def _base_of(model: type[BaseModel]) -> str | None:
    """Which of OpenEnv's three bases ``model`` subclasses (ours or either openenv package's,
    recognised by name), or ``None``; a base itself has none."""
    for klass in model.__mro__[1:]:
        if klass.__name__ in _BASES and issubclass(klass, BaseModel):
            return klass.__name__
    return None


def overrides(cls: type, name: str) -> bool:
    """Whether ``cls`` (or a base of its own) defines ``name``, rather than inheriting the
    default of OpenEnv's ``Environment`` base (either package's, or ours)."""
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__qualname__ != "Environment"
    return False


def mcp_actions(cls: type) -> dict[str, type[BaseModel]]:
    """OpenEnv's MCP actions by their ``type`` tag (``list_tools``, ``call_tool``) for an
    ``MCPEnvironment`` subclass, taken from the module that defines ``MCPEnvironment``; empty for
    any other env."""
    for klass in cls.__mro__:
        if klass.__name__ == "MCPEnvironment":
            module = sys.modules[klass.__module__]
            return {"list_tools": module.ListToolsAction, "call_tool": module.CallToolAction}
    return {}


def _model_layers(cls: type) -> list[dict[str, type[BaseModel]]]:
    """The Action / Observation / State models (bases included) an env class's own code holds,
    nearest first: the names of its module (and its bases' modules), then of its package's
    ``models`` module (OpenEnv's layout, when imported), then OpenEnv's MCP models for an MCP
    env."""
    parts = cls.__module__.split(".")
    layers = [
        [sys.modules.get(klass.__module__) for klass in cls.__mro__],
        [sys.modules.get(".".join([*parts[:n], "models"])) for n in range(len(parts), -1, -1)],
        [sys.modules.get(k.__module__) for k in cls.__mro__ if k.__name__ == "MCPEnvironment"],
    ]
    found = []
    for modules in layers:
        layer: dict[str, type[BaseModel]] = {}
        for module in modules:
            for value in vars(module).values() if module is not None else ():
                model = _as_model(value)
                if model is not None and (_base_of(model) or model.__name__ in _BASES):
                    layer[type_path(model)] = model
        found.append(layer)
    return found


def related_models(cls: type) -> dict[str, type[BaseModel]]:
    """Every model :func:`_model_layers` finds, by :func:`type_path`. Imports nothing."""
    return {path: model for layer in _model_layers(cls) for path, model in layer.items()}


def _only(layers: list[dict[str, type[BaseModel]]], base: str, leave_out: set[type]) -> Any:
    """The one model deriving from ``base`` (leaving out ``leave_out``) in the nearest layer
    that has any; ``None`` when that layer has several."""
    for layer in layers:
        matching = [m for m in layer.values() if _base_of(m) == base and m not in leave_out]
        if matching:
            return matching[0] if len(matching) == 1 else None
    return None


@cache
def env_types(cls: type) -> EnvTypes:
    """The Action / Observation / State models of an env class.

    Read, in order, from class attributes ``action_type`` / ``observation_type`` / ``state_type``,
    from the ``Environment[...]`` generic parameters, from the annotations of ``step`` and
    ``state`` (unless they name a base class), then from the models its own code holds
    (:func:`related_models`) when exactly one fits (OpenEnv's own envs often name their types
    nowhere else); OpenEnv's base models are the fallback, except for an MCP env, whose
    fallbacks are ``CallToolAction`` / ``CallToolObservation`` (as OpenEnv serves them).
    """
    args = _generic_args(cls)
    try:
        step_hints = typing.get_type_hints(getattr(cls, "step"))  # noqa: B009
    except Exception:  # an env's annotations may name types only its own module can resolve
        step_hints = {}
    state_getter = inspect.getattr_static(cls, "state", None)
    try:
        state_hints = (
            typing.get_type_hints(state_getter.fget) if isinstance(state_getter, property) else {}
        )
    except Exception:
        state_hints = {}
    layers = _model_layers(cls)
    mcp = {*mcp_actions(cls).values()}
    mcp_observations = {m for m in layers[-1].values() if m.__name__ in _MCP_OBSERVATIONS}
    candidates = {
        "action": (
            getattr(cls, "action_type", None),
            args[0] if len(args) > 0 else None,
            step_hints.get("action"),
            _only(layers, "Action", mcp),
        ),
        "observation": (
            getattr(cls, "observation_type", None),
            args[1] if len(args) > 1 else None,
            step_hints.get("return"),
            _only(layers, "Observation", mcp_observations),
        ),
        "state": (
            getattr(cls, "state_type", None),
            args[2] if len(args) > 2 else None,
            state_hints.get("return"),
            _only(layers, "State", set()),
        ),
    }
    fallbacks: dict[str, type[BaseModel]] = {
        "action": Action,
        "observation": Observation,
        "state": State,
    }
    found: dict[str, type[BaseModel]] = {}
    for role, (attribute, generic, *inferred) in candidates.items():
        declared = [m for m in map(_as_model, (attribute, generic)) if m is not None]
        # an annotation naming a base class (MCPEnvironment's ``-> Observation``) says nothing
        inferred_models = [m for m in map(_as_model, inferred) if m is not None and not _is_base(m)]
        found[role] = next(iter(declared + inferred_models), fallbacks[role])
    call_tool = mcp_actions(cls).get("call_tool")
    if call_tool is not None:
        # OpenEnv serves its own MCP envs with create_app(Env, CallToolAction,
        # CallToolObservation): an action without a type tag is a tool call there, and here
        for role, model in (
            ("action", call_tool),
            ("observation", sys.modules[call_tool.__module__].CallToolObservation),
        ):
            if _is_base(found[role]):
                found[role] = model
    return EnvTypes(found["action"], found["observation"], found["state"])


_MCP_OBSERVATIONS = frozenset({"ListToolsObservation", "CallToolObservation"})


def _is_base(model: type[BaseModel]) -> bool:
    """OpenEnv's base Action / Observation / State (either package's, or ours): saying it is
    the type says nothing, so the search goes on."""
    return model.__name__ in _BASES and _base_of(model) is None
